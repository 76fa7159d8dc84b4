"""Training data as the loop sees it: subsets, a carved validation split, class weights and the
tf.data pipeline with the paper's augmentation (plus the shortcut augmentation)."""

from __future__ import annotations

from typing import Any

import numpy as np

from core.training.config import TrainConfig
from core.training.data import ArraySplit, Sample


def subset(split: ArraySplit, n: int | None, seed: int) -> ArraySplit:
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


def carve_val(samples: list[Sample], config: TrainConfig) -> list[Sample]:
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
