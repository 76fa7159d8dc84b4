"""Training: tf.data pipeline, the paper's protocols, resumable runs, artifact + registry entry.

TensorFlow/Keras are imported inside functions only (core/ stays importable without them).

A run lives in `<models_dir>/<model_id>/`:
    checkpoints/last.weights.h5, best.weights.h5, state.json   (resume; never committed)
    model.keras, roc.png, reliability.png, confusion.png, card.md, metrics.json   (artifact)

Decisions worth knowing (why, not what):
- Backbone BatchNorm layers stay frozen (inference mode) when the backbone starts from ImageNet
  weights: updating them on small X-ray batches is what makes fine-tuned Keras models drift.
  Backbones trained from scratch must learn their BatchNorm statistics, so theirs train.
- The head's BatchNorm momentum is lowered (0.99 -> 0.9) so its moving statistics keep up with
  a backbone being fine-tuned, and after training every trainable BatchNorm layer's statistics
  are re-estimated on clean (un-augmented) training images (`reestimate_batchnorm`). Without
  this, the served probabilities were badly shifted (mean 0.075 on a balanced test set).
- Probabilities are then calibrated on the validation split (Platt by default) and the
  operating threshold is chosen on calibrated validation probabilities (core.evaluation).
- Checkpoints are written every epoch, with the epoch count, learning rate and best validation
  AUC in state.json, so `resume=True` continues an interrupted run where it stopped. Adam's
  moment estimates are not kept across a resume (they re-warm within a few dozen steps), and
  ReduceLROnPlateau/EarlyStopping patience counters restart at a resume or a new stage.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from core.architectures import ARCHITECTURES
from core.calibration import apply_calibration
from core.conditions import get_condition
from core.data import ArraySplit, Sample, load_arrays, load_samples, split_counts
from core.evaluation import (
    DEFAULT_MIN_SENSITIVITY,
    choose_threshold,
    compare_at_operating_point,
    evaluate_predictions,
    fit_calibration,
    plot_confusion,
    plot_reliability,
    plot_roc,
    roc_auc,
    threshold_rule_text,
    thumbnail_baseline,
)
from core.preprocessing import to_model_input

CLASS_LABELS = {
    "pneumonia": ["no pneumonia", "pneumonia"],
    "cardiomegaly": ["no cardiomegaly", "cardiomegaly"],
    "fracture": ["no fracture", "fracture"],
    "knee_osteoarthritis": ["no osteoarthritis (KL 0-1)", "osteoarthritis (KL >= 2)"],
    "knee_osteoporosis": ["no osteoporosis", "osteoporosis"],
}

# The paper's two protocols, plus the house fine-tuning recipe used for the delivered fast
# models. Every number can be overridden from the command line; the registry records what ran.
PROTOCOLS: dict[str, dict[str, Any]] = {
    # Transfer learning: backbone frozen, head trained.
    "quick": {
        "epochs": 5,
        "batch_size": 25,
        "lr": 1e-3,
        "schedule": "frozen",
        "patience_lr": 2,
        "patience_stop": 3,
    },
    # Gradual unfreezing: head, then the top third, two thirds, all of the backbone.
    "intensive": {
        "epochs": 50,
        "batch_size": 16,
        "lr": 1e-5,
        "schedule": "gradual",
        "stage_epochs": 2,
        "patience_lr": 3,
        "patience_stop": 8,
    },
    # Head warm-up at 1e-3 for `warmup_epochs`, then the whole backbone at `lr`.
    "finetune": {
        "epochs": 12,
        "batch_size": 32,
        "lr": 1e-4,
        "schedule": "warmup",
        "warmup_epochs": 1,
        "patience_lr": 2,
        "patience_stop": 4,
    },
}
HEAD_LR = 1e-3
MIN_CALIBRATION_PER_CLASS = 10
# One-sided confidence of the exact lower bound of validation sensitivity that must reach the
# target: the margin that keeps the promised sensitivity on test (core.evaluation).
THRESHOLD_CONFIDENCE = 0.95
# A test set this small cannot validate a model: it is registered experimental.
MIN_TEST_POSITIVES = 30
MIN_TEST_IMAGES = 100

# Who each condition's training data came from: the integrator's applicability check and the
# model cards read it from the registry entry.
POPULATIONS: dict[str, dict[str, Any]] = {
    "pneumonia": {
        "region": "chest",
        "image_kind": "full film",
        "views": ["AP/PA frontal"],
        "age_group": "children",
        "age_range_years": [1, 5],
        "sources": ["Kermany et al. 2018, Guangzhou Women and Children's Medical Center"],
        "recogniser_classes": ["chest_child"],
        "description": "Children's frontal chest films (Guangzhou, ages 1-5)",
    },
    "cardiomegaly": {
        "region": "chest",
        "image_kind": "full film",
        "views": ["PA/AP frontal"],
        "age_group": "adults",
        "age_range_years": None,
        "sources": ["NIH ChestX-ray14 (Wang et al. 2017)"],
        "recogniser_classes": ["chest_adult"],
        "description": "Adults' frontal chest films (NIH Clinical Center, ChestX-ray14)",
    },
    "fracture": {
        "region": "limb",
        "image_kind": "full film",
        "views": ["frontal", "lateral", "oblique"],
        "age_group": "both",
        "age_range_years": None,
        "sources": [
            "FracAtlas (Abedeen et al. 2023): hand, leg, hip, shoulder",
            "Kaggle 'bone fracture detection using X-rays': upper limb",
        ],
        "recogniser_classes": ["limb"],
        "description": "Limb radiographs of adults and children (FracAtlas hand, leg, hip and "
        "shoulder films from Bangladesh; Kaggle upper-limb films)",
    },
    "knee_osteoarthritis": {
        "region": "knee",
        "image_kind": "joint crop (CLAHE)",
        "views": ["PA fixed-flexion"],
        "age_group": "adults",
        "age_range_years": [45, 79],
        "sources": ["Osteoarthritis Initiative, crops by Chen et al. 2019"],
        "recogniser_classes": ["knee_crop"],
        "description": "Adults' knee joint crops, contrast-equalised (CLAHE), from the "
        "Osteoarthritis Initiative (ages 45-79)",
    },
    "knee_osteoporosis": {
        "region": "knee",
        "image_kind": "full film",
        "views": ["AP bilateral"],
        "age_group": "adults",
        "age_range_years": None,
        "sources": ["Wani & Arora knee X-ray database with DXA T-scores (Mendeley Data fxjm8fb6mw)"],
        "recogniser_classes": ["knee_film"],
        "description": "Adults' bilateral AP knee films with a DXA T-score (Wani & Arora, India)",
    },
}


@dataclass
class TrainConfig:
    condition: str
    data: str
    architecture: str = "mobilenetv2"
    model_id: str | None = None
    input_size: tuple[int, int] | None = None
    protocol: str = "quick"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    warmup_epochs: int | None = None
    seed: int = 42
    imagenet_weights: str | None = None
    augment: bool = True
    horizontal_flip: bool | None = None  # None: the condition's allow_horizontal_flip
    rotation_degrees: float = 20.0
    brightness: float = 0.10
    contrast: float = 0.20
    zoom: float = 0.10
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    val_fraction: float = 0.3  # carved from train by group when the data has no val split
    max_train: int | None = None  # stratified random subset, recorded in the registry
    max_val: int | None = None
    calibration: str = "platt"
    min_sensitivity: float = DEFAULT_MIN_SENSITIVITY
    threshold_confidence: float | None = THRESHOLD_CONFIDENCE
    shortcut_augment: bool = False  # border blanking, pasted markers, centre crops, gamma
    cv_folds: int = 0  # > 1: grouped cross-validation on train+val before the final model
    cv_epochs: int | None = None
    bn_reestimate_images: int = 2048
    dense_units: tuple[int, ...] = (256,)
    dropout: float = 0.3
    threads: int | None = None
    cache_dir: str | None = None
    n_boot: int = 1000
    patience: int | None = None  # EarlyStopping patience (None: the protocol's)
    status: str | None = None  # None: 'validated', or 'experimental' when data are tiny
    experimental_reason: str | None = None
    notes: list[str] = field(default_factory=list)

    def resolved(self) -> TrainConfig:
        get_condition(self.condition)
        if self.architecture not in ("mobilenetv2", "densenet121"):
            raise ValueError("architecture must be mobilenetv2 or densenet121")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}")
        p = PROTOCOLS[self.protocol]
        size = tuple(self.input_size or ARCHITECTURES[self.architecture]["input_size"])
        c = TrainConfig(**{**asdict(self), "input_size": (int(size[0]), int(size[1]))})
        c.epochs = int(self.epochs or p["epochs"])
        c.batch_size = int(self.batch_size or p["batch_size"])
        c.lr = float(self.lr or p["lr"])
        c.warmup_epochs = int(
            self.warmup_epochs if self.warmup_epochs is not None else p.get("warmup_epochs", 0)
        )
        if c.horizontal_flip is None:
            c.horizontal_flip = get_condition(self.condition).allow_horizontal_flip
        if c.model_id is None:
            c.model_id = f"{self.condition}-{self.architecture}-{size[0]}-v1"
        return c


@dataclass
class Stage:
    start_epoch: int
    end_epoch: int  # exclusive
    trainable: str  # "head" | "top1/3" | "top2/3" | "all"
    lr: float


def plan_stages(config: TrainConfig, *, pretrained: bool) -> list[Stage]:
    """The protocol's schedule as epoch ranges with what is trainable and at which rate."""
    p = PROTOCOLS[config.protocol]
    epochs, lr = int(config.epochs or 0), float(config.lr or 0)
    if p["schedule"] == "frozen":
        if not pretrained:
            # A frozen random backbone learns nothing: train everything instead (recorded).
            return [Stage(0, epochs, "all", lr)]
        return [Stage(0, epochs, "head", lr)]
    if p["schedule"] == "warmup":
        warm = min(int(config.warmup_epochs or 0), epochs) if pretrained else 0
        stages = [Stage(0, warm, "head", HEAD_LR)] if warm else []
        return stages + [Stage(warm, epochs, "all", lr)] if epochs > warm else stages
    # gradual unfreezing
    if not pretrained:
        return [Stage(0, epochs, "all", lr)]
    k = int(p.get("stage_epochs", 2))
    stages, start = [], 0
    for trainable in ("head", "top1/3", "top2/3"):
        end = min(start + k, epochs)
        if end > start:
            stages.append(Stage(start, end, trainable, lr))
        start = end
    if epochs > start:
        stages.append(Stage(start, epochs, "all", lr))
    return stages


# ----------------------------------------------------------------------------- TF helpers


def configure_tensorflow(threads: int | None = None, seed: int | None = None) -> None:
    """Thread counts (shared CPU) and seeds; call before building any model."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    n = threads or int(os.environ.get("RADTRIAGE_TF_THREADS", "0")) or (os.cpu_count() or 1)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, n))
    except RuntimeError:
        pass  # already initialised in this process (tests): keep the settings
    if seed is not None:
        keras.utils.set_random_seed(seed)


def _backbone(model: Any) -> Any | None:
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return layer
    return None


def _walk(layer: Any) -> list[Any]:
    out = [layer]
    for sub in getattr(layer, "layers", []) or []:
        out.extend(_walk(sub))
    return out


def set_trainable(model: Any, what: str, *, freeze_backbone_bn: bool) -> None:
    """Freeze/unfreeze the backbone: 'head' (none of it), 'top1/3', 'top2/3' or 'all'."""
    import keras

    backbone = _backbone(model)
    model.trainable = True
    if backbone is None:
        return
    layers = backbone.layers
    fraction = {"head": 0.0, "top1/3": 1 / 3, "top2/3": 2 / 3, "all": 1.0}[what]
    cutoff = len(layers) - int(round(fraction * len(layers)))
    backbone.trainable = fraction > 0
    for i, layer in enumerate(layers):
        trainable = i >= cutoff
        if freeze_backbone_bn and isinstance(layer, keras.layers.BatchNormalization):
            trainable = False
        layer.trainable = trainable


def predict_probabilities(model: Any, gray: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """uint8 (n, h, w) -> raw model probabilities float64 (n,)."""
    out = []
    for start in range(0, len(gray), batch_size):
        batch = to_model_input(gray[start : start + batch_size])
        out.append(np.array(model(batch, training=False).numpy()).reshape(-1))
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def reestimate_batchnorm(
    model: Any, gray: np.ndarray, *, batch_size: int = 64, max_images: int = 2048, seed: int = 0
) -> int:
    """Replace moving statistics of every trainable BatchNorm layer by their average over
    clean training batches (cumulative average via momentum k/(k+1)); returns layers updated.

    Frozen (trainable=False) BatchNorm layers run in inference mode and are left alone.
    """
    import keras

    bns = [
        layer
        for layer in _walk(model)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]
    if not bns or len(gray) == 0:
        return 0
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(gray))[:max_images]
    momenta = [layer.momentum for layer in bns]
    try:
        for k, start in enumerate(range(0, len(idx), batch_size)):
            batch = idx[start : start + batch_size]
            if len(batch) < 2:
                break
            for layer in bns:
                layer.momentum = k / (k + 1.0)
            model(to_model_input(gray[batch]), training=True)
    finally:
        for layer, m in zip(bns, momenta, strict=True):
            layer.momentum = m
    return len(bns)


def shortcut_augment(
    x: Any, *, max_border: float = 0.12, crop_min: float = 0.75, markers: int = 3, gamma: float = 0.4
) -> Any:
    """Augmentation against shortcuts: float32 [0, 1] (b, h, w, 1) -> same shape.

    Why: the maps of the first chest models lit up side markers, borders, text and
    electrodes, and an 8x8 thumbnail was as good as the network. So each image gets
    - a centre-biased random crop (area crop_min..1, resized back): the lung fields/anatomy
      stay in view while borders, and what sits on them, move or leave the frame;
    - strips of random width (up to max_border of the side) blanked at each border with a
      random gray, half of the time: what is at the edge cannot be relied on;
    - up to `markers` text-like blobs (striped bright or dark rectangles, like letters and
      L/R markers) pasted at random places, equally in both classes, so such marks carry no
      label information;
    - a random gamma in [1 - gamma, 1 + gamma] (exposure/processing differences).
    """
    import tensorflow as tf

    b, h, w = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
    # centre-biased crop: side s in [sqrt(crop_min), 1], centre within half the free margin
    side = tf.sqrt(tf.random.uniform((b,), crop_min, 1.0))
    free = (1.0 - side) / 2.0
    cy = 0.5 + tf.random.uniform((b,), -1.0, 1.0) * free * 0.5
    cx = 0.5 + tf.random.uniform((b,), -1.0, 1.0) * free * 0.5
    boxes = tf.stack([cy - side / 2, cx - side / 2, cy + side / 2, cx + side / 2], axis=1)
    x = tf.image.crop_and_resize(x, boxes, tf.range(b), tf.stack([h, w]))

    yy = tf.cast(tf.range(h), tf.float32)[None, :, None, None] / tf.cast(h, tf.float32)
    xx = tf.cast(tf.range(w), tf.float32)[None, None, :, None] / tf.cast(w, tf.float32)

    def per_image(shape_low: float, shape_high: float) -> Any:
        return tf.random.uniform((b, 1, 1, 1), shape_low, shape_high)

    # border strips
    on = tf.cast(per_image(0.0, 1.0) < 0.5, tf.float32)
    top, bottom = per_image(0, max_border) * on, per_image(0, max_border) * on
    left, right = per_image(0, max_border) * on, per_image(0, max_border) * on
    strip = (yy < top) | (yy > 1 - bottom) | (xx < left) | (xx > 1 - right)
    x = tf.where(strip, per_image(0.0, 1.0), x)

    # text-like markers: a rectangle with vertical stripes (letters), bright or dark
    for _ in range(markers):
        show = per_image(0.0, 1.0) < 0.5
        mh, mw = per_image(0.03, 0.08), per_image(0.04, 0.15)
        y0, x0 = per_image(0.0, 1.0) * (1 - mh), per_image(0.0, 1.0) * (1 - mw)
        inside = (yy >= y0) & (yy < y0 + mh) & (xx >= x0) & (xx < x0 + mw)
        letters = tf.sin((xx - x0) * 2.0 * 3.14159 / (mh * 0.8)) > -0.2
        value = tf.where(per_image(0.0, 1.0) < 0.7, per_image(0.85, 1.0), per_image(0.0, 0.1))
        x = tf.where(show & inside & letters, value, x)

    g = tf.exp(per_image(tf.math.log(1.0 - gamma), tf.math.log(1.0 + gamma)))
    return tf.clip_by_value(x, 0.0, 1.0) ** g


def make_dataset(
    split: ArraySplit, *, batch_size: int, training: bool, config: TrainConfig, seed: int
) -> Any:
    """uint8 arrays -> tf.data of (float32 RGB [0,1] (b, h, w, 3), float32 labels (b, 1)).

    Training adds the paper's augmentation: rotation up to +-rotation_degrees, zoom,
    brightness and contrast jitter, horizontal flip only where the condition allows it.
    """
    import keras
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((split.x[..., None], split.y.astype(np.float32)[:, None])).cache()
    if training:
        ds = ds.shuffle(len(split.y), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=False)

    rotate = keras.layers.RandomRotation(
        config.rotation_degrees / 360.0, fill_mode="constant", fill_value=0.0, seed=seed
    )
    zoom = (
        keras.layers.RandomZoom(config.zoom, config.zoom, fill_mode="constant", fill_value=0.0, seed=seed + 1)
        if config.zoom
        else None
    )
    flip = bool(config.horizontal_flip)
    brightness, contrast = float(config.brightness), float(config.contrast)

    def to_float(x: Any, y: Any) -> tuple[Any, Any]:
        return tf.cast(x, tf.float32) / 255.0, y

    def augment(x: Any, y: Any) -> tuple[Any, Any]:
        n = tf.shape(x)[0]
        x = rotate(x, training=True)
        if zoom is not None:
            x = zoom(x, training=True)
        if flip:
            coin = tf.random.uniform((n, 1, 1, 1)) < 0.5
            x = tf.where(coin, tf.reverse(x, axis=[2]), x)
        mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
        c = tf.random.uniform((n, 1, 1, 1), 1 - contrast, 1 + contrast)
        b = tf.random.uniform((n, 1, 1, 1), -brightness, brightness)
        x = tf.clip_by_value((x - mean) * c + mean + b, 0.0, 1.0)
        if config.shortcut_augment:
            x = shortcut_augment(x)
        return x, y

    def to_rgb(x: Any, y: Any) -> tuple[Any, Any]:
        return tf.image.grayscale_to_rgb(x), y

    ds = ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
    if training and config.augment:
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.map(to_rgb, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def class_weights(y: np.ndarray) -> dict[int, float]:
    """Balanced weights n / (2 n_c): each class contributes half of the loss."""
    n = len(y)
    counts = np.bincount(y.astype(int), minlength=2)
    return {c: float(n / (2 * max(counts[c], 1))) for c in (0, 1)}


class _Progress:
    """Keras callback factory: a tqdm bar per epoch with loss and ETA (mininterval in logs)."""

    @staticmethod
    def make(steps: int, total_epochs: int, log: Callable[[str], None]) -> Any:
        import keras
        from tqdm import tqdm

        class Progress(keras.callbacks.Callback):
            bar: Any = None

            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                interval = 0.5 if sys.stderr.isatty() else 30.0
                self.bar = tqdm(
                    total=steps,
                    desc=f"epoch {epoch + 1}/{total_epochs}",
                    unit="batch",
                    mininterval=interval,
                    file=sys.stderr,
                )

            def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
                self.bar.update(1)
                if logs and "loss" in logs:
                    self.bar.set_postfix(loss=f"{float(logs['loss']):.4f}", refresh=False)

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                self.bar.close()
                shown = {k: round(float(v), 4) for k, v in (logs or {}).items()}
                log(f"epoch {epoch + 1}/{total_epochs}: {shown}")

        return Progress()


# ----------------------------------------------------------------------------- the run


@dataclass
class RunResult:
    model_id: str
    artifact: Path
    entry: dict[str, Any]
    history: list[dict[str, float]]
    epochs_run: int
    finished: bool


def _subset(split: ArraySplit, n: int | None, seed: int) -> ArraySplit:
    if n is None or n >= split.n:
        return split
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for c in (0, 1):
        idx = np.flatnonzero(split.y == c)
        take = int(round(n * len(idx) / split.n))
        keep.extend(rng.choice(idx, size=min(take, len(idx)), replace=False).tolist())
    keep.sort()
    return ArraySplit(
        split.x[keep], split.y[keep], [split.paths[i] for i in keep], [split.groups[i] for i in keep]
    )


def _carve_val(samples: list[Sample], config: TrainConfig) -> list[Sample]:
    """No val split: move a group-disjoint, label-stratified fraction of train to 'val'."""
    rng = np.random.default_rng(config.seed)
    train = [s for s in samples if s.split == config.train_split]
    moved: set[str] = set()
    for label in (0, 1):
        groups = sorted({s.group for s in train if s.label == label})
        k = max(1, int(round(config.val_fraction * len(groups))))
        moved.update(rng.choice(groups, size=min(k, len(groups)), replace=False).tolist())
    return [
        Sample(s.path, config.val_split, s.label, s.group)
        if s.split == config.train_split and s.group in moved
        else s
        for s in samples
    ]


def train_model(
    config: TrainConfig,
    *,
    models_dir: str | Path,
    registry_path: str | Path | None = None,
    activate: bool = False,
    resume: bool = False,
    command: str | None = None,
    log: Callable[[str], None] = print,
    stop_after_epochs: int | None = None,
) -> RunResult:
    """Train (or resume), then calibrate, threshold, evaluate, save and register.

    stop_after_epochs: stop this sitting after that many new epochs (a budgeted sitting of a
    long run); the run is left resumable and nothing is registered until it finishes.
    """
    import keras

    from core.architectures import build_model

    config = config.resolved()
    assert config.model_id and config.input_size and config.epochs and config.batch_size
    configure_tensorflow(config.threads, config.seed)
    out_dir = Path(models_dir) / config.model_id
    ckpt_dir = out_dir / "checkpoints"
    state_file = ckpt_dir / "state.json"
    if not resume and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {}
    if resume and state_file.is_file():
        state = json.loads(state_file.read_text())
        log(
            f"resuming {config.model_id}: {state['epochs_done']} epoch(s) done, "
            f"best val AUC {state.get('best_val_auc')}"
        )

    # ---- data
    samples = load_samples(config.data, condition=config.condition)
    if not any(s.split == config.val_split for s in samples):
        samples = _carve_val(samples, config)
        config.notes.append(
            f"no '{config.val_split}' split in the data: "
            f"{config.val_fraction:.0%} of training groups held out as val"
        )
    counts = split_counts(samples)
    cache = config.cache_dir
    train = _subset(
        load_arrays(
            [s for s in samples if s.split == config.train_split],
            input_size=config.input_size,
            cache_dir=cache,
        ),
        config.max_train,
        config.seed,
    )
    val = _subset(
        load_arrays(
            [s for s in samples if s.split == config.val_split], input_size=config.input_size, cache_dir=cache
        ),
        config.max_val,
        config.seed + 1,
    )
    test_samples = [s for s in samples if s.split == config.test_split]
    test = load_arrays(test_samples, input_size=config.input_size, cache_dir=cache) if test_samples else None
    if train.n == 0 or len(set(train.y.tolist())) < 2:
        raise ValueError("the training split needs images of both classes")
    log(f"data: train {train.counts()}, val {val.counts()}, test {test.counts() if test else None}")
    cv_file = ckpt_dir / "cv.json"
    cv = json.loads(cv_file.read_text()) if cv_file.is_file() else None
    if config.cv_folds > 1 and cv is None:
        cv = cross_validate(config, folds=config.cv_folds, epochs=config.cv_epochs, log=log)
        cv_file.write_text(json.dumps(cv, indent=1))
        log(f"cross-validation: pooled AUC {cv['pooled_auc']} {cv['pooled_auc_ci95']}")

    # ---- model
    pretrained = config.imagenet_weights is not None
    model = build_model(
        config.architecture,
        input_size=config.input_size,
        imagenet_weights=config.imagenet_weights,
        dense_units=config.dense_units,
        dropout=config.dropout,
        seed=config.seed,
    )
    model.get_layer("head_bn").momentum = 0.9
    if state.get("epochs_done"):
        model.load_weights(ckpt_dir / "last.weights.h5")

    stages = plan_stages(config, pretrained=pretrained)
    train_ds = make_dataset(
        train, batch_size=config.batch_size, training=True, config=config, seed=config.seed
    )
    weights = class_weights(train.y)
    steps = math.ceil(train.n / config.batch_size)
    history: list[dict[str, float]] = list(state.get("history", []))
    best_auc = state.get("best_val_auc")
    epochs_done = int(state.get("epochs_done", 0))
    wall = float(state.get("wall_s", 0.0))
    lr_now = state.get("lr")
    stopped_early = bool(state.get("stopped_early", False))
    sittings = int(state.get("sittings", 0)) + 1  # how many runs (resumes) this training took
    new_epochs = 0
    p = PROTOCOLS[config.protocol]

    bn_probe = _subset(train, min(train.n, 512), config.seed + 2).x

    class CleanValidation(keras.callbacks.Callback):
        """Validation after re-estimating trainable BatchNorm statistics on clean training
        images, so val_auc (which drives checkpointing, the learning rate and early stopping)
        measures the model as it will be served, not with statistics of augmented batches."""

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            reestimate_batchnorm(self.model, bn_probe, max_images=len(bn_probe), seed=config.seed + epoch)
            p_val = predict_probabilities(self.model, val.x)
            q = np.clip(p_val, 1e-7, 1 - 1e-7)
            if logs is not None:
                logs["val_auc"] = roc_auc(val.y, p_val)
                logs["val_loss"] = float(-np.mean(val.y * np.log(q) + (1 - val.y) * np.log1p(-q)))
                logs["val_accuracy"] = float(np.mean((p_val >= 0.5) == (val.y == 1)))

    class Persist(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.t0 = time.time()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            nonlocal best_auc, epochs_done, wall, lr_now, new_epochs
            logs = {k: float(v) for k, v in (logs or {}).items()}
            history.append({"epoch": epoch + 1, **logs})
            wall += time.time() - self.t0
            epochs_done = epoch + 1
            new_epochs += 1
            lr_now = float(self.model.optimizer.learning_rate.numpy())
            if best_auc is None or logs.get("val_auc", -1) > best_auc:
                best_auc = logs.get("val_auc")
            self.model.save_weights(ckpt_dir / "last.weights.h5")
            _write_state(
                state_file,
                epochs_done=epochs_done,
                best_val_auc=best_auc,
                lr=lr_now,
                history=history,
                wall_s=wall,
                stopped_early=False,
                sittings=sittings,
                config=asdict(config),
            )
            if stop_after_epochs is not None and new_epochs >= stop_after_epochs:
                self.model.stop_training = True

    for stage in stages:
        if stopped_early or epochs_done >= stage.end_epoch:
            continue
        if stop_after_epochs is not None and new_epochs >= stop_after_epochs:
            break
        set_trainable(model, stage.trainable, freeze_backbone_bn=pretrained)
        lr = stage.lr
        if lr_now is not None and epochs_done > stage.start_epoch:
            lr = float(lr_now)  # resuming inside this stage: keep the reduced rate
        # Gradient-norm clipping: full fine-tuning at 2e-4 without it diverged on knee OA.
        model.compile(
            optimizer=keras.optimizers.Adam(lr, clipnorm=1.0),
            loss=keras.losses.BinaryCrossentropy(),
            metrics=[keras.metrics.AUC(name="auc")],
        )
        log(
            f"stage {stage.trainable}: epochs {max(epochs_done, stage.start_epoch) + 1}"
            f"-{stage.end_epoch}, lr {lr:g}, trainable weights "
            f"{sum(int(np.prod(w.shape)) for w in model.trainable_weights):,}"
        )
        final_stage = stage is stages[-1]
        early = keras.callbacks.EarlyStopping(
            monitor="val_auc", mode="max", patience=int(config.patience or p["patience_stop"])
        )
        callbacks = [
            CleanValidation(),
            _Progress.make(steps, config.epochs, log),
            keras.callbacks.ModelCheckpoint(
                str(ckpt_dir / "best.weights.h5"),
                monitor="val_auc",
                mode="max",
                save_best_only=True,
                save_weights_only=True,
                initial_value_threshold=best_auc,
            ),
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_auc", mode="max", factor=0.3, patience=int(p["patience_lr"]), min_lr=1e-7
            ),
            early,
            Persist(),
        ]
        model.fit(
            train_ds,
            epochs=stage.end_epoch,
            initial_epoch=max(epochs_done, stage.start_epoch),
            class_weight=weights,
            callbacks=callbacks,
            verbose=0,
        )
        if early.stopped_epoch and final_stage:
            stopped_early = True
            _write_state(
                state_file,
                epochs_done=epochs_done,
                best_val_auc=best_auc,
                lr=lr_now,
                history=history,
                wall_s=wall,
                stopped_early=True,
                sittings=sittings,
                config=asdict(config),
            )

    finished = stopped_early or epochs_done >= config.epochs
    if not finished:
        log(
            f"sitting over after {new_epochs} new epoch(s): {epochs_done}/{config.epochs} done; "
            "continue with --resume"
        )
        return RunResult(config.model_id, out_dir / "model.keras", {}, history, epochs_done, False)

    # ---- finish: best weights, BatchNorm statistics, calibration, threshold, evaluation
    if (ckpt_dir / "best.weights.h5").is_file():
        model.load_weights(ckpt_dir / "best.weights.h5")
    if stages:
        # A run resumed only to finish never passed through set_trainable: without this, the
        # frozen ImageNet BatchNorm statistics of the backbone would be re-estimated below.
        set_trainable(model, stages[-1].trainable, freeze_backbone_bn=pretrained)
    n_bn = reestimate_batchnorm(model, train.x, max_images=config.bn_reestimate_images, seed=config.seed)
    log(f"re-estimated statistics of {n_bn} BatchNorm layer(s) on clean training images")
    final = build_model(
        config.architecture,
        input_size=config.input_size,
        imagenet_weights=None,
        dense_units=config.dense_units,
        dropout=config.dropout,
    )
    final.set_weights(model.get_weights())
    out_dir.mkdir(parents=True, exist_ok=True)
    artifact = out_dir / "model.keras"
    final.save(artifact)

    entry = finalize_model(
        final,
        config=config,
        out_dir=out_dir,
        train=train,
        val=val,
        test=test,
        counts=counts,
        history=history,
        epochs_run=epochs_done,
        wall_s=wall,
        stopped_early=stopped_early,
        stages=stages,
        command=command,
        log=log,
        sittings=sittings,
        artifact_root=Path(registry_path).resolve().parent if registry_path else None,
        cross_validation=cv,
    )
    if registry_path is not None:
        register_entry(entry, registry_path=registry_path, activate=activate)
        log(f"registered {config.model_id} in {registry_path}" + (" (active)" if activate else " (inactive)"))
    return RunResult(config.model_id, artifact, entry, history, epochs_done, True)


def _write_state(path: Path, **state: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1, default=str))
    tmp.replace(path)


def calibrate_on_validation(y: np.ndarray, p_raw: np.ndarray, *, method: str) -> dict[str, Any]:
    """Fit the calibration on validation predictions, or none when there are too few cases:
    a calibration fitted on a handful of separable cases is degenerate (a -> infinity)."""
    per_class = np.bincount(np.asarray(y).astype(int), minlength=2)
    if per_class.min() < MIN_CALIBRATION_PER_CLASS:
        return {
            "method": "none",
            "reason": (
                f"too few validation images to fit a calibration ({per_class[0]} negative / "
                f"{per_class[1]} positive; need {MIN_CALIBRATION_PER_CLASS} of each): "
                "probabilities are the model's raw output"
            ),
        }
    return fit_calibration(y, p_raw, method=method)


def finalize_model(
    model: Any,
    *,
    config: TrainConfig,
    out_dir: Path,
    train: ArraySplit,
    val: ArraySplit,
    test: ArraySplit | None,
    counts: dict[str, dict[str, int]],
    history: list[dict[str, float]],
    epochs_run: int,
    wall_s: float,
    stopped_early: bool,
    stages: Sequence[Stage],
    command: str | None,
    log: Callable[[str], None] = print,
    artifact_root: Path | None = None,
    sittings: int = 1,
    cross_validation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Calibrate + threshold on val, evaluate val/test, write plots, card and metrics.json;
    return the registry entry (not yet registered)."""
    from core.model_card import write_card
    from core.registry import sha256_file

    assert config.model_id and config.input_size
    labels = CLASS_LABELS[config.condition]
    val_raw = predict_probabilities(model, val.x)
    calibration = calibrate_on_validation(val.y, val_raw, method=config.calibration)
    val_cal = apply_calibration(val_raw, calibration)
    threshold = choose_threshold(
        val.y, val_cal, min_sensitivity=config.min_sensitivity, confidence=config.threshold_confidence
    )
    metrics = {
        "val": evaluate_predictions(
            val.y, val_cal, threshold, n_boot=config.n_boot, seed=config.seed, groups=val.groups
        )
    }
    metrics["val"]["auc_raw"] = round(roc_auc(val.y, val_raw), 4)
    metrics["val"]["mean_probability_raw"] = round(float(val_raw.mean()), 4)
    eval_split, eval_set, eval_raw = "val", val, val_raw
    if test is not None and test.n:
        test_raw = predict_probabilities(model, test.x)
        test_cal = apply_calibration(test_raw, calibration)
        metrics["test"] = evaluate_predictions(
            test.y, test_cal, threshold, n_boot=config.n_boot, seed=config.seed, groups=test.groups
        )
        metrics["test"]["mean_probability_raw"] = round(float(test_raw.mean()), 4)
        eval_split, eval_set, eval_raw = "test", test, test_raw
    eval_cal = apply_calibration(eval_raw, calibration)
    m = metrics[eval_split]
    title = f"{config.model_id} ({eval_split}, n={m['n']})"
    plot_roc(
        out_dir / "roc.png", eval_set.y, eval_cal, title=title, threshold=threshold, auc_ci=m["auc_ci95"]
    )
    plot_reliability(out_dir / "reliability.png", eval_set.y, eval_cal, p_raw=eval_raw, title=title)
    plot_confusion(out_dir / "confusion.png", m["confusion"], labels=labels, title=title)
    baseline = baseline_beside_model(
        train, val, eval_set, eval_cal, threshold, config=config, split=eval_split
    )
    log(
        f"{eval_split}: AUC {m['auc']} {m['auc_ci95']}, accuracy {m['accuracy']}, "
        f"sensitivity {m['sensitivity']}, specificity {m['specificity']}, threshold "
        f"{threshold:.4f}, Brier skill {m['brier_skill']}; baseline AUC {baseline['auc']}, "
        f"at its operating point {baseline.get('operating_point')}; "
        f"beats baseline: {baseline.get('comparison', {}).get('beats_baseline')}"
    )

    status, reason = decide_status(config, metrics, baseline, eval_split)
    # Registry paths are relative to the registry file's folder.
    rel = (
        Path(os.path.relpath(out_dir.resolve(), artifact_root))
        if artifact_root
        else Path("models") / config.model_id
    )
    weights_name = Path(config.imagenet_weights).name if config.imagenet_weights else None
    entry: dict[str, Any] = {
        "id": config.model_id,
        "condition": config.condition,
        "architecture": config.architecture,
        "family": ARCHITECTURES[config.architecture]["family"],
        "input_size": list(config.input_size),
        "class_labels": labels,
        "preprocessing": {"color": "rgb", "resize": "area/linear", "scale": "x/255"},
        "gradcam_layer": None,
        "threshold": round(float(threshold), 6),
        "threshold_rule": threshold_rule_text(config.min_sensitivity, config.threshold_confidence),
        "calibration": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in calibration.items()},
        "metrics": metrics,
        "baseline": baseline,
        "population": POPULATIONS.get(config.condition),
        "artifact": str(rel / "model.keras"),
        "sha256": sha256_file(out_dir / "model.keras"),
        "status": status,
        "training": {
            "data": str(config.data),
            "n": counts,
            "n_used": {
                "train": train.counts(),
                "val": val.counts(),
                **({"test": test.counts()} if test is not None else {}),
            },
            "protocol": config.protocol,
            "stages": [asdict(s) for s in stages],
            "epochs_planned": config.epochs,
            "epochs_run": epochs_run,
            "stopped_early": stopped_early,
            "best_val_auc_during_training": max((h.get("val_auc", 0.0) for h in history), default=None),
            "batch_size": config.batch_size,
            "early_stopping_patience": int(config.patience or PROTOCOLS[config.protocol]["patience_stop"]),
            "learning_rate": config.lr,
            "optimizer": "Adam (clipnorm 1.0)",
            "class_weights": class_weights(train.y),
            "augmentation": {
                "rotation_degrees": config.rotation_degrees,
                "zoom": config.zoom,
                "brightness": config.brightness,
                "contrast": config.contrast,
                "horizontal_flip": config.horizontal_flip,
                "enabled": config.augment,
                "shortcut": (
                    "centre-biased crops, blanked border strips, pasted text-like markers, gamma"
                    if config.shortcut_augment
                    else None
                ),
            },
            "seed": config.seed,
            "imagenet_weights": weights_name,
            "batchnorm": "backbone BN frozen" if weights_name else "all BN trained",
            "wall_time_s": round(wall_s, 1),
            "sittings": sittings,
            "hardware": f"{platform.machine()} CPU x{os.cpu_count()}",
            "command": command,
            "notes": list(config.notes),
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "card": str(rel / "card.md"),
    }
    if status == "experimental":
        entry["experimental_reason"] = reason
    if cross_validation is not None:
        entry["cross_validation"] = cross_validation
    (out_dir / "metrics.json").write_text(
        json.dumps({"metrics": metrics, "baseline": baseline, "history": history}, indent=1)
    )
    write_card(out_dir / "card.md", entry)
    return entry


def baseline_beside_model(
    train: ArraySplit,
    val: ArraySplit,
    evaluated: ArraySplit,
    p_model: np.ndarray,
    threshold: float,
    *,
    config: TrainConfig,
    split: str,
) -> dict[str, Any]:
    """The 8x8-thumbnail baseline on the evaluated split, at its own operating point (chosen
    on validation by the same rule as the model), and the paired comparison with the model."""
    baseline = thumbnail_baseline(
        train.x,
        train.y,
        evaluated.x,
        evaluated.y,
        n_boot=config.n_boot,
        val_x=val.x,
        val_y=val.y,
        min_sensitivity=config.min_sensitivity,
        confidence=config.threshold_confidence,
        groups=evaluated.groups,
    )
    p_base = baseline.pop("_p_test")
    baseline["split"] = split
    if "operating_point" in baseline:
        baseline["comparison"] = compare_at_operating_point(
            evaluated.y,
            p_model,
            threshold,
            p_base,
            baseline["operating_point"]["threshold"],
            groups=evaluated.groups,
            n_boot=config.n_boot,
            seed=config.seed,
        )
    return baseline


def decide_status(
    config: TrainConfig, metrics: dict[str, Any], baseline: dict[str, Any], split: str
) -> tuple[str, str | None]:
    """'validated' only when nothing below holds; otherwise 'experimental' with the reasons
    in words (the admin page and the card show them)."""
    reasons = [config.experimental_reason] if config.experimental_reason else []
    m = metrics.get(split, {})
    if split != "test":
        reasons.append("no independent test split: figures are on validation images")
    if m.get("n", 0) < MIN_TEST_IMAGES or m.get("n_positive", 0) < MIN_TEST_POSITIVES:
        reasons.append(
            f"tiny {split} set ({m.get('n_negative')} negative / "
            f"{m.get('n_positive')} positive images): the figures are too "
            "uncertain to validate the model"
        )
    lo = (m.get("auc_ci95") or [None])[0]
    if lo is None or lo <= 0.5:
        reasons.append(
            f"the 95% interval of the {split} AUC ({m.get('auc_ci95')}) reaches "
            "0.5: it may be no better than chance"
        )
    comparison = baseline.get("comparison")
    if comparison is not None and not comparison["beats_baseline"]:
        d = comparison["balanced_accuracy_difference"]
        ci = comparison["balanced_accuracy_difference_ci95"]
        reasons.append(
            f"at its operating point it does not clearly beat logistic regression "
            f"on 8x8 thumbnails (balanced accuracy difference {d} [{ci[0]}, "
            f"{ci[1]}]): it may rely on global brightness/layout shortcuts"
        )
    if config.status == "experimental" or reasons:
        return "experimental", "; ".join(reasons) or "experimental model: not validated"
    return config.status or "validated", None


def register_entry(entry: dict[str, Any], *, registry_path: str | Path, activate: bool = False) -> None:
    from core.registry import Registry

    registry_path = Path(registry_path)
    registry = Registry.load(registry_path)
    registry.register(entry, activate=activate)
    registry.save()


# Fields other helpers write into an entry; a re-evaluation keeps them.
KEPT_FIELDS = (
    "applicability",
    "gradcam_review",
    "gradcam_layer",
    "limitations",
    "inactive_reason",
    "cross_validation",
)


def _load_splits(
    config: TrainConfig,
) -> tuple[ArraySplit, ArraySplit, ArraySplit | None, dict[str, dict[str, int]]]:
    samples = load_samples(config.data, condition=config.condition)
    counts = split_counts(samples)
    cache = config.cache_dir

    def arrays(split: str) -> ArraySplit | None:
        chosen = [s for s in samples if s.split == split]
        return (
            load_arrays(chosen, input_size=config.input_size or (224, 224), cache_dir=cache)
            if chosen
            else None
        )

    train, val, test = arrays(config.train_split), arrays(config.val_split), arrays(config.test_split)
    if train is None or val is None:
        raise ValueError(f"{config.data} needs a '{config.train_split}' and a '{config.val_split}' split")
    return train, val, test, counts


def refinalize_model(
    registry_path: str | Path,
    model_id: str,
    *,
    data: str | Path,
    cache_dir: str | Path | None = None,
    n_boot: int = 1000,
    min_sensitivity: float = DEFAULT_MIN_SENSITIVITY,
    threshold_confidence: float | None = THRESHOLD_CONFIDENCE,
    activate: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Re-run calibration, threshold, evaluation, baseline, status and card of a registered
    model with today's rules, on the same splits; the artifact (and its checksum) is not
    touched, nor the training record or the fields other tools wrote (KEPT_FIELDS,
    metrics.test.pointing_game). Returns the new entry, registered under the same id."""
    import keras

    from core.model_card import write_card
    from core.registry import Registry

    registry = Registry.load(registry_path)
    old = registry.entry(model_id).raw
    root = Path(registry_path).resolve().parent
    t = old.get("training", {})
    config = TrainConfig(
        condition=old["condition"],
        data=str(data),
        architecture=old["architecture"],
        model_id=model_id,
        input_size=tuple(old["input_size"]),
        protocol=t.get("protocol", "quick"),
        seed=int(t.get("seed", 42)),
        calibration=(old.get("calibration") or {}).get("method", "platt")
        if (old.get("calibration") or {}).get("method") != "none"
        else "platt",
        min_sensitivity=min_sensitivity,
        threshold_confidence=threshold_confidence,
        n_boot=n_boot,
        cache_dir=str(cache_dir) if cache_dir else None,
    ).resolved()
    train, val, test, counts = _load_splits(config)
    model = keras.models.load_model(root / old["artifact"], compile=False)
    out_dir = (root / old["artifact"]).parent
    entry = finalize_model(
        model,
        config=config,
        out_dir=out_dir,
        train=train,
        val=val,
        test=test,
        counts=counts,
        history=[],
        epochs_run=int(t.get("epochs_run", 0)),
        wall_s=float(t.get("wall_time_s", 0)),
        stopped_early=bool(t.get("stopped_early")),
        stages=[],
        command=None,
        log=log,
        artifact_root=root,
    )
    merged = {
        **entry,
        "training": t,
        "created": old.get("created", entry["created"]),
        "re_evaluated": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    for key in KEPT_FIELDS:
        if key in old:
            merged[key] = old[key]
    pointing = old.get("metrics", {}).get("test", {}).get("pointing_game")
    if pointing is not None and "test" in merged["metrics"]:
        merged["metrics"]["test"]["pointing_game"] = pointing
    if merged["status"] != "experimental":
        merged.pop("experimental_reason", None)
    write_card(out_dir / "card.md", merged)
    registry = Registry.load(registry_path)  # re-read: others may have written meanwhile
    registry.register(merged, activate=activate)
    registry.save()
    log(
        f"re-evaluated {model_id}: status {merged['status']}"
        + (f" ({merged.get('experimental_reason')})" if merged["status"] == "experimental" else "")
    )
    return merged


def cross_validate(
    config: TrainConfig, *, folds: int = 5, epochs: int | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Grouped, label-stratified k-fold cross-validation on train + val (test untouched):
    each fold trains a fresh model with the run's recipe for a fixed number of epochs (no
    early stopping: nothing is tuned on the held-out fold) and scores its held-out patients.
    -> pooled out-of-fold AUC with a patient-bootstrap interval, per-fold AUCs, and the
    sensitivity/specificity at each fold's threshold chosen on its own training folds."""
    import keras
    from sklearn.model_selection import StratifiedGroupKFold

    from core.architectures import build_model
    from core.evaluation import bootstrap_intervals, clopper_pearson

    config = config.resolved()
    assert config.input_size and config.batch_size and config.epochs
    configure_tensorflow(config.threads, config.seed)
    samples = [
        s
        for s in load_samples(config.data, condition=config.condition)
        if s.split in (config.train_split, config.val_split)
    ]
    pool = load_arrays(samples, input_size=config.input_size, cache_dir=config.cache_dir)
    n_epochs = int(epochs or config.epochs)
    oof = np.full(pool.n, np.nan)
    fold_of = np.full(pool.n, -1)
    per_fold: list[dict[str, Any]] = []
    tp = fn = tn = fp = 0
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=config.seed)
    for k, (tr, te) in enumerate(splitter.split(np.zeros(pool.n), pool.y, pool.groups)):
        t0 = time.time()
        fit = ArraySplit(pool.x[tr], pool.y[tr], [pool.paths[i] for i in tr], [pool.groups[i] for i in tr])
        model = build_model(
            config.architecture,
            input_size=config.input_size,
            imagenet_weights=config.imagenet_weights,
            dense_units=config.dense_units,
            dropout=config.dropout,
            seed=config.seed + k,
        )
        model.get_layer("head_bn").momentum = 0.9
        pretrained = config.imagenet_weights is not None
        ds = make_dataset(
            fit, batch_size=config.batch_size, training=True, config=config, seed=config.seed + k
        )
        for stage in plan_stages(replace_epochs(config, n_epochs), pretrained=pretrained):
            set_trainable(model, stage.trainable, freeze_backbone_bn=pretrained)
            model.compile(
                optimizer=keras.optimizers.Adam(stage.lr, clipnorm=1.0),
                loss=keras.losses.BinaryCrossentropy(),
            )
            model.fit(
                ds,
                epochs=stage.end_epoch,
                initial_epoch=stage.start_epoch,
                class_weight=class_weights(fit.y),
                verbose=0,
            )
        reestimate_batchnorm(model, fit.x, max_images=config.bn_reestimate_images, seed=config.seed)
        p_fit = predict_probabilities(model, fit.x)
        p_out = predict_probabilities(model, pool.x[te])
        oof[te], fold_of[te] = p_out, k
        # Threshold from the fold's own training images: optimistic there, so a strict test.
        t = choose_threshold(fit.y, p_fit, min_sensitivity=config.min_sensitivity)
        y_te = pool.y[te]
        tp += int(((p_out >= t) & (y_te == 1)).sum())
        fn += int(((p_out < t) & (y_te == 1)).sum())
        tn += int(((p_out < t) & (y_te == 0)).sum())
        fp += int(((p_out >= t) & (y_te == 0)).sum())
        per_fold.append(
            {
                "fold": k,
                "n": int(len(te)),
                "n_positive": int(y_te.sum()),
                "auc": _round(roc_auc(y_te, p_out)),
                "wall_s": round(time.time() - t0),
            }
        )
        log(f"fold {k + 1}/{folds}: {per_fold[-1]}")
        keras.backend.clear_session()
    ci = bootstrap_intervals(pool.y, oof, 0.5, n_boot=config.n_boot, seed=config.seed, groups=pool.groups)[
        "auc"
    ]
    fold_aucs = [f["auc"] for f in per_fold if f["auc"] is not None]
    return {
        "method": (
            f"{folds}-fold cross-validation on train+val, grouped by patient and "
            f"stratified by label; {n_epochs} epochs per fold, no early stopping"
        ),
        "n": pool.n,
        "n_positive": int(pool.y.sum()),
        "n_negative": int(pool.n - pool.y.sum()),
        "n_groups": len(set(pool.groups)),
        "pooled_auc": _round(roc_auc(pool.y, oof)),
        "pooled_auc_ci95": [_round(ci[0]), _round(ci[1])],
        "fold_auc_mean": _round(float(np.mean(fold_aucs))) if fold_aucs else None,
        "fold_auc_sd": _round(float(np.std(fold_aucs, ddof=1))) if len(fold_aucs) > 1 else None,
        "folds": per_fold,
        "sensitivity": _round(tp / max(tp + fn, 1)),
        "sensitivity_ci95": [_round(v) for v in clopper_pearson(tp, tp + fn)],
        "specificity": _round(tn / max(tn + fp, 1)),
        "specificity_ci95": [_round(v) for v in clopper_pearson(tn, tn + fp)],
        "threshold_rule": (
            "each fold: highest threshold with sensitivity >= "
            f"{config.min_sensitivity:.2f} on its own training folds"
        ),
    }


def replace_epochs(config: TrainConfig, epochs: int) -> TrainConfig:
    return TrainConfig(**{**asdict(config), "epochs": epochs})


def _round(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 4)


def remove_model(registry_path: str | Path, model_id: str) -> None:
    """Drop a replaced model's registry entry (its folder is removed with `git rm`); an active
    model cannot be removed: activate its replacement first."""
    from core.registry import Registry

    registry = Registry.load(registry_path)
    entry = registry.entry(model_id)
    if registry.active_models.get(entry.condition) == model_id:
        raise ValueError(f"{model_id} is the active {entry.condition} model: activate its replacement first")
    del registry.models[model_id]
    registry.save()


def annotate_model(registry_path: str | Path, model_id: str, **fields: Any) -> None:
    """Add review fields (e.g. gradcam_review, limitations) to an entry; re-render its card."""
    from core.model_card import write_card
    from core.registry import Registry

    registry = Registry.load(registry_path)
    entry = registry.entry(model_id)
    raw = {**entry.raw, **fields}
    registry.models[model_id] = type(entry)(raw)
    registry.save()
    if raw.get("card"):
        write_card(Path(registry_path).resolve().parent / raw["card"], raw)
