"""One run of the box-aware head (core.training.boxed_head) from data folder to registry entry:
decode, trunk features (cached), head training on train (epoch chosen on val), the served Keras
model, then the same calibration, threshold, evaluation, baseline and card as every model
(core.training.finalize). The pointing game and the population check are measured afterwards
by their own tools (bench/pointing_game.py --write, manage.py fit_population)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from core.training.boxed_head import (
    CUT_LAYER,
    BoxedHeadConfig,
    HeadWeights,
    box_masks,
    boxes_by_path,
    build_boxed_model,
    build_trunk,
    train_head,
    trunk_features,
)
from core.training.config import TrainConfig
from core.training.data import ArraySplit, load_arrays, load_samples, split_counts
from core.training.pointing_game import load_boxes


def train_boxed_model(
    *,
    condition: str,
    data_root: str | Path,
    boxes_csv: str | Path | None,
    imagenet_weights: str | Path,
    model_id: str,
    registry_path: str | Path,
    config: BoxedHeadConfig,
    cache_dir: str | Path | None = None,
    command: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train, evaluate and register (inactive); returns the registry entry."""
    from core.training.entries import register_entry
    from core.training.finalize import finalize_model

    started = time.monotonic()
    data_root = Path(data_root)
    size = tuple(config.input_size)
    samples = load_samples(data_root / condition, condition=condition)
    splits = {
        split: load_arrays([s for s in samples if s.split == split], input_size=size, cache_dir=cache_dir)
        for split in ("train", "val", "test")
    }
    boxes = {}
    if boxes_csv is not None:  # no boxes: the image label alone (e.g. border-blanked pneumonia)
        boxes = load_boxes(boxes_csv, split="train")
        boxes.update(load_boxes(boxes_csv, split="val"))  # val boxes choose the epoch; never test
    trunk = build_trunk(size, imagenet_weights, border=config.border)
    key = f"border{config.border}"
    train_f = _features(trunk, splits["train"], cache_dir, flip=False, log=log, key=key)
    train_ff = _features(trunk, splits["train"], cache_dir, flip=True, log=log, key=key)
    val_f = _features(trunk, splits["val"], cache_dir, flip=False, log=log, key=key)
    grid = train_f.shape[1:3]
    train_boxes = boxes_by_path(boxes, splits["train"].paths, data_root)
    val_boxes = boxes_by_path(boxes, splits["val"].paths, data_root)
    log(
        f"trunk maps {train_f.shape[1:]}, {sum(map(bool, train_boxes))} boxed train films, "
        f"{sum(map(bool, val_boxes))} boxed val films"
    )
    strict = config.box_cells == "centre"
    weights, history = train_head(
        np.concatenate([train_f, train_ff]),
        np.concatenate([splits["train"].y, splits["train"].y]),
        np.concatenate([box_masks(train_boxes, grid, flip=f, strict=strict) for f in (False, True)]),
        val_f,
        splits["val"].y,
        box_masks(val_boxes, grid, strict=strict),
        config=config,
        log=log,
    )
    out_dir = Path(registry_path).resolve().parent / "models" / model_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model = build_boxed_model(size, imagenet_weights, weights, dropout=config.dropout, border=config.border)
    model.save(out_dir / "model.keras")
    train_config = TrainConfig(
        condition=condition,
        data=str(data_root / condition),
        architecture="mobilenetv2",
        model_id=model_id,
        input_size=(int(size[0]), int(size[1])),
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed,
        imagenet_weights=str(imagenet_weights),
        dropout=config.dropout,
        dense_units=(config.units,),
        cache_dir=str(cache_dir) if cache_dir else None,
    ).resolved()
    best = max(history, key=lambda h: h["score"])
    entry = finalize_model(
        model,
        config=train_config,
        out_dir=out_dir,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        counts=split_counts(samples),
        history=history,
        epochs_run=len(history),
        wall_s=time.monotonic() - started,
        stopped_early=False,
        stages=[],
        command=command,
        log=log,
        artifact_root=Path(registry_path).resolve().parent,
    )
    entry["gradcam_layer"] = "cell_dense"
    # A per-cell head's blank-film pattern is its own bias map, not a padding artefact:
    # subtracting it (core.gradcam's position reference) sent every validation peak of the v1
    # fracture model to a corner (0/114 hits against 68/114 without it).
    entry["gradcam_position_reference"] = False
    entry["training"].update(training_record(config, best, weights, with_boxes=bool(boxes)))
    from core.training.model_card import write_card

    write_card(out_dir / "card.md", entry)
    register_entry(entry, registry_path=registry_path)
    return entry


def training_record(
    config: BoxedHeadConfig, best: dict[str, float], weights: HeadWeights, *, with_boxes: bool = True
) -> dict[str, Any]:
    return {
        "protocol": "boxed head",
        "head": (
            ("film borders blanked, then " if config.border else "")
            + f"frozen ImageNet MobileNetV2 cut at {CUT_LAYER}; the paper's Dense+ReLU "
            f"({weights.kernel.shape[1]} units) applied per cell as a 1x1 convolution, then GAP, "
            "BatchNorm (identity, mean = training films' mean), Dropout, Dense(1, sigmoid)"
        ),
        "loss": (
            "class-weighted BCE of the image logit (mean of cell logits)"
            + (
                f" + {config.box_weight} x -log(softmax mass of the cells "
                + ("whose centre lies inside" if config.box_cells == "centre" else "touching")
                + " the finding's boxes), train boxes only"
                if with_boxes
                else " (no boxes)"
            )
            + "; horizontal flips"
            + (f"; {config.border:.0%} of each side blanked inside the model" if config.border else "")
        ),
        "optimizer": f"AdamW (weight decay {config.weight_decay})",
        "augmentation": {"enabled": True, "horizontal_flip": True, "note": "mirrored films, boxes mirrored"},
        "batchnorm": "backbone BN frozen (ImageNet statistics); the head's BatchNorm is an identity",
        "best_epoch": int(best["epoch"]),
        "best_val_auc_during_training": round(best["auc"], 4),
        "best_val_cell_pointing": round(best["pointing"], 4),
        "epoch_chosen_by": "validation AUC"
        + (" + validation pointing game at cell level" if with_boxes else ""),
        "boxed_head_config": asdict(config),
    }


def _features(
    trunk: Any,
    split: ArraySplit,
    cache_dir: str | Path | None,
    *,
    flip: bool,
    log: Callable[[str], None],
    key: str = "",
) -> np.ndarray:
    """Trunk maps of a split, cached by the films, size and flip (they take minutes on a CPU)."""
    key = hashlib.sha256(
        ("\n".join(split.paths) + f"|{split.x.shape}|{flip}|{CUT_LAYER}|{key}|v1").encode()
    ).hexdigest()[:20]
    cache = Path(cache_dir) / f"trunk-{key}.npy" if cache_dir else None
    if cache is not None and cache.is_file():
        # Memory-mapped: at 512 px the train maps and their mirror are ~2.4 GB each, and the
        # head's training set is their concatenation; reading them in too ran out of memory.
        return np.load(cache, mmap_mode="r")
    started = time.monotonic()
    features = trunk_features(trunk, split.x, flip=flip)
    mirrored = " (mirrored)" if flip else ""
    log(f"trunk features of {len(split.x)} films{mirrored}: {time.monotonic() - started:.0f} s")
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, features)
    return features
