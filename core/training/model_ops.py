"""TensorFlow/Keras helpers of training: thread settings, what is trainable, raw probabilities,
BatchNorm re-estimation. TensorFlow is imported inside functions only."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from core.preprocessing import to_model_input


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
