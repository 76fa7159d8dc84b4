"""A head that learns WHERE the finding is: trained with the finding's boxes, so Grad-CAM's peak
lands on it (scored by the pointing game).

Why: a head on a frozen backbone's pooled features, trained on the image label only, is never
told where the fracture is. Its Grad-CAM peak falls in a fracture box on 1 of 45 test films
(fracture-mobilenetv2-224-v1), worse than pointing at the image centre (3 of 45).

The model (built by `build_boxed_model`, served like every other model):
    image -> Rescaling to [-1, 1] -> "mobilenetv2": ImageNet MobileNetV2 cut at
    `block_13_expand_relu` (stride 16: 24x24 cells at 384 px, each cell about 4% of the film)
    -> "cell_dense": the paper's Dense+ReLU applied to every cell (a 1x1 convolution)
    -> "gap" -> "head_bn" -> "head_dropout" -> "probability": Dense(1, sigmoid)
It is the paper's head with its Dense+ReLU moved before the pooling. Everything after
"cell_dense" is linear, so the image's logit is the MEAN of per-cell logits
s_ij = v . h_ij + b, and Grad-CAM at "cell_dense" (measured against head_bn's mean, as
core.gradcam does) is exactly max(0, s_ij - s_mean): the map shows each cell's own evidence.
head_bn is an identity whose moving mean is the training films' mean pooled feature: it exists
for that reference and for the population check's feature contract (core.population).

Training (backbone frozen; its features are computed once, so a run takes minutes on a CPU):
    loss = BCE(image logit, label)                               every film (class-weighted)
         + box_weight * -log(sum over in-box cells of softmax(s))  boxed positives (train only)
The second term is the pointing game made differentiable: it rewards the hottest cells being
inside a box. Boxes come from the TRAIN split only; validation picks the epoch, test is never
looked at here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from core.localisation import Box

CUT_LAYER = "block_13_expand_relu"


@dataclass
class BoxedHeadConfig:
    input_size: tuple[int, int] = (384, 384)
    units: int = 128
    box_weight: float = 1.0
    epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    dropout: float = 0.3
    seed: int = 42
    # Share of the film's width and height blanked (black) on each side, inside the model, at
    # training and serving alike: side markers, text and borders cannot be learned (shortcuts).
    border: float = 0.0
    # Which cells a box marks (box_masks): "centre" = cells whose centre lies in the box, what
    # the pointing game scores; "overlap" = every cell the box touches (the v1 model: its peak
    # then often sat on a cell whose centre is just outside the box, 68/114 on val vs 74/114).
    box_cells: Literal["centre", "overlap"] = "centre"


@dataclass
class HeadWeights:
    """The trained head in the served layout: h = relu(x @ kernel + bias); s = h @ v + b."""

    kernel: np.ndarray  # (c, units), input standardisation folded in
    bias: np.ndarray  # (units,)
    v: np.ndarray  # (units,)
    b: float
    pooled_mean: np.ndarray  # (units,) mean pooled h over the training films


# ----------------------------------------------------------------------------- features


def build_trunk(input_size: Sequence[int], imagenet_weights: str | Path, *, border: float = 0.0) -> Any:
    """image in [0, 1] -> block_13_expand_relu maps: the frozen ImageNet part of the model,
    after blanking `border` of each side (Cropping2D then ZeroPadding2D: built-in layers, so the
    saved model needs no custom code, and the maps stay aligned with the film)."""
    import keras

    height, width = int(input_size[0]), int(input_size[1])
    full = keras.applications.MobileNetV2(
        input_shape=(height, width, 3), include_top=False, weights=str(imagenet_weights)
    )
    trunk = keras.Model(full.input, full.get_layer(CUT_LAYER).output, name="mobilenetv2")
    inputs = keras.Input(shape=(height, width, 3), name="image")
    x = inputs
    if border > 0:
        margin = (int(round(height * border)), int(round(width * border)))
        x = keras.layers.Cropping2D((margin, margin), name="border_crop")(x)
        x = keras.layers.ZeroPadding2D((margin, margin), name="border_blank")(x)
    x = keras.layers.Rescaling(2.0, offset=-1.0, name="to_minus1_1")(x)
    return keras.Model(inputs, trunk(x), name="trunk")


def trunk_features(
    trunk: Any,
    gray: np.ndarray,
    *,
    flip: bool = False,
    batch: int = 32,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """uint8 (n, h, w) -> float16 (n, gh, gw, c) trunk maps (of the mirrored films with flip)."""
    from core.preprocessing import to_model_input

    out = []
    for i in range(0, len(gray), batch):
        chunk = gray[i : i + batch]
        if flip:
            chunk = chunk[:, :, ::-1]
        out.append(np.asarray(trunk(to_model_input(np.ascontiguousarray(chunk)), training=False), np.float16))
        if progress:
            progress(min(i + batch, len(gray)))
    return np.concatenate(out)


def box_masks(
    boxes: Sequence[Sequence[Box]], grid: Sequence[int], *, flip: bool = False, strict: bool = False
) -> np.ndarray:
    """Per film, the cells a box covers: bool (n, gh, gw).

    Overlap (default): a cell counts when it overlaps the box (its centre lies within half a
    cell of it). strict: a cell counts only when its centre lies inside the box, which is what
    the pointing game scores (the served map peaks at a cell's centre); a box that holds no cell
    centre (smaller than a cell) marks the cell its own centre falls in.
    A film without boxes gets an all-False mask (it takes no part in the box term)."""
    gh, gw = int(grid[0]), int(grid[1])
    cy = (np.arange(gh) + 0.5) / gh
    cx = (np.arange(gw) + 0.5) / gw
    masks = np.zeros((len(boxes), gh, gw), bool)
    for n, film in enumerate(boxes):
        for x0, y0, x1, y1 in film:
            if flip:
                x0, x1 = 1.0 - x1, 1.0 - x0
            if strict:
                rows, cols = (cy >= y0) & (cy <= y1), (cx >= x0) & (cx <= x1)
            else:
                rows = (cy > y0 - 0.5 / gh) & (cy < y1 + 0.5 / gh)
                cols = (cx > x0 - 0.5 / gw) & (cx < x1 + 0.5 / gw)
            cells = rows[:, None] & cols[None, :]
            if not cells.any():
                row = min(int((y0 + y1) / 2 * gh), gh - 1)
                col = min(int((x0 + x1) / 2 * gw), gw - 1)
                cells[row, col] = True
            masks[n] |= cells
    return masks


# ----------------------------------------------------------------------------- training


def train_head(
    train_x: np.ndarray,
    train_y: np.ndarray,
    train_masks: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    val_masks: np.ndarray,
    *,
    config: BoxedHeadConfig,
    log: Callable[[str], None] = print,
) -> tuple[HeadWeights, list[dict[str, float]]]:
    """Fit the head on cached trunk maps; keep the epoch with the best validation score
    (AUC + pointing game on the boxed validation films, each in [0, 1])."""
    import tensorflow as tf

    tf.random.set_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    c = train_x.shape[-1]
    mean, std = channel_statistics(train_x)
    init = tf.keras.initializers.GlorotUniform(seed=config.seed)
    w1 = tf.Variable(init((c, config.units)), name="w1")
    b1 = tf.Variable(tf.zeros(config.units), name="b1")
    v = tf.Variable(init((config.units, 1))[:, 0] * 0.1, name="v")
    prior = float(train_y.mean())
    b = tf.Variable(math.log(prior / (1 - prior)), name="b")
    params = [w1, b1, v, b]
    opt = tf.keras.optimizers.AdamW(learning_rate=config.lr, weight_decay=config.weight_decay)
    pos_weight = (1 - prior) / prior
    mean_t, std_t = tf.constant(mean), tf.constant(std)

    def cell_logits(x: Any, training: bool) -> Any:
        z = (tf.cast(x, tf.float32) - mean_t) / std_t
        h = tf.nn.relu(tf.einsum("nhwc,cu->nhwu", z, w1) + b1)
        if training and config.dropout:
            h = tf.nn.dropout(h, rate=config.dropout)
        return tf.einsum("nhwu,u->nhw", h, v) + b

    @tf.function(reduce_retracing=True)
    def step(x: Any, y: Any, m: Any) -> Any:
        with tf.GradientTape() as tape:
            s = cell_logits(x, True)
            logit = tf.reduce_mean(s, axis=(1, 2))
            weights = tf.where(y > 0.5, pos_weight, 1.0)
            image_loss = tf.reduce_mean(
                weights * tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logit)
            )
            flat = tf.reshape(s, [tf.shape(s)[0], -1])
            mflat = tf.reshape(tf.cast(m, tf.float32), tf.shape(flat))
            boxed = tf.reduce_max(mflat, axis=1)
            in_box = tf.reduce_logsumexp(flat + tf.math.log(mflat + 1e-12), axis=1)
            point_loss = tf.math.divide_no_nan(
                tf.reduce_sum(boxed * (tf.reduce_logsumexp(flat, axis=1) - in_box)), tf.reduce_sum(boxed)
            )
            loss = image_loss + config.box_weight * point_loss
        opt.apply_gradients(zip(tape.gradient(loss, params), params, strict=True))
        return image_loss, point_loss

    @tf.function(reduce_retracing=True)
    def predict(x: Any) -> Any:
        return cell_logits(x, False)

    def evaluate(x: np.ndarray) -> np.ndarray:
        return np.concatenate([predict(x[i : i + 128]).numpy() for i in range(0, len(x), 128)])

    best: tuple[float, HeadWeights] | None = None
    history: list[dict[str, float]] = []
    n = len(train_x)
    for epoch in range(config.epochs):
        order = rng.permutation(n)
        losses = []
        for i in range(0, n, config.batch_size):
            idx = np.sort(order[i : i + config.batch_size])
            losses.append(
                [float(t) for t in step(train_x[idx], train_y[idx].astype(np.float32), train_masks[idx])]
            )
        cells = evaluate(val_x)
        score = validation_score(cells, val_y, val_masks)
        record = {"epoch": epoch + 1, "image_loss": float(np.mean([loss[0] for loss in losses]))}
        record.update({"point_loss": float(np.mean([loss[1] for loss in losses])), **score})
        history.append(record)
        log(
            f"epoch {epoch + 1}: loss {record['image_loss']:.3f} + {record['point_loss']:.3f}, "
            f"val AUC {score['auc']:.3f}, val cell pointing {score['pointing']:.3f}"
        )
        if best is None or score["score"] > best[0]:
            best = (score["score"], _fold(w1, b1, v, b, mean, std))
    assert best is not None
    weights = best[1]
    weights.pooled_mean = pooled_mean(weights, train_x)
    return weights, history


def channel_statistics(x: np.ndarray, batch: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of float16 maps (n, h, w, c), a batch at a time
    (the whole set in float32 would need several GB)."""
    total = np.zeros(x.shape[-1], np.float64)
    squares = np.zeros(x.shape[-1], np.float64)
    count = 0
    for i in range(0, len(x), batch):
        chunk = x[i : i + batch].astype(np.float64).reshape(-1, x.shape[-1])
        total += chunk.sum(axis=0)
        squares += (chunk**2).sum(axis=0)
        count += len(chunk)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0)) + 1e-3
    return mean.astype(np.float32), std.astype(np.float32)


def validation_score(cells: np.ndarray, y: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    auc = float(roc_auc_score(y, cells.mean(axis=(1, 2))))
    boxed = masks.reshape(len(masks), -1).any(axis=1)
    flat = cells.reshape(len(cells), -1)
    hits = masks.reshape(len(masks), -1)[np.arange(len(flat)), flat.argmax(axis=1)]
    pointing = float(hits[boxed].mean()) if boxed.any() else 0.0
    return {"auc": auc, "pointing": pointing, "score": auc + pointing}


def _fold(w1: Any, b1: Any, v: Any, b: Any, mean: np.ndarray, std: np.ndarray) -> HeadWeights:
    """Fold the input standardisation into the 1x1 kernel: ((x - m) / s) @ W = x @ (W / s) - ..."""
    w = w1.numpy() / std[:, None]
    return HeadWeights(
        kernel=w.astype(np.float32),
        bias=(b1.numpy() - mean @ w).astype(np.float32),
        v=v.numpy().astype(np.float32),
        b=float(b.numpy()),
        pooled_mean=np.zeros(w.shape[1], np.float32),
    )


def pooled_mean(weights: HeadWeights, x: np.ndarray, batch: int = 256) -> np.ndarray:
    total = np.zeros(weights.kernel.shape[1], np.float64)
    for i in range(0, len(x), batch):
        h = np.maximum(x[i : i + batch].astype(np.float32) @ weights.kernel + weights.bias, 0.0)
        total += h.mean(axis=(1, 2)).sum(axis=0)
    return (total / len(x)).astype(np.float32)


# ----------------------------------------------------------------------------- the served model


def build_boxed_model(
    input_size: Sequence[int],
    imagenet_weights: str | Path,
    weights: HeadWeights,
    *,
    dropout: float = 0.3,
    border: float = 0.0,
) -> Any:
    """The served Keras model (see the module doc): trunk + the trained head, one file."""
    import keras

    trunk = build_trunk(input_size, imagenet_weights, border=border)
    units = weights.kernel.shape[1]
    x = trunk.output
    h = keras.layers.Conv2D(units, 1, activation="relu", name="cell_dense")(x)
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    bn = keras.layers.BatchNormalization(name="head_bn")
    z = keras.layers.Dropout(dropout, name="head_dropout")(bn(pooled))
    dense = keras.layers.Dense(1, activation="sigmoid", name="probability")
    model = keras.Model(trunk.input, dense(z), name=f"mobilenetv2_boxed_{int(input_size[0])}")
    model.get_layer("cell_dense").set_weights([weights.kernel[None, None], weights.bias])
    eps = bn.epsilon
    # Identity (gamma 1, variance 1 - eps, beta = moving mean); its mean is Grad-CAM's reference.
    ones, mean = np.ones(units, np.float32), weights.pooled_mean
    bn.set_weights([ones, mean, mean, np.full(units, 1 - eps, np.float32)])
    dense.set_weights([weights.v[:, None], np.array([weights.b], np.float32)])
    return model


def boxes_by_path(boxes: Mapping[str, list[Box]], paths: Sequence[str], data_root: Path) -> list[list[Box]]:
    """The boxes of each film (by its path relative to the data root), [] where it has none."""
    out = []
    for p in paths:
        rel = Path(p).resolve().relative_to(data_root.resolve()).as_posix()
        out.append(list(boxes.get(rel, [])))
    return out
