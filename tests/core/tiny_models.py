"""A tiny real Keras model trained in seconds on synthetic 'bright blob' images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SIZE = 64
BLOB_RADIUS = 7


@dataclass
class BlobData:
    images: np.ndarray  # float32 (n, SIZE, SIZE, 3) in [0, 1]
    labels: np.ndarray  # (n,)
    centres: np.ndarray  # (n, 2) row, col of the blob (-1 for negatives)


def make_blob_images(n: int, *, seed: int) -> BlobData:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    images = rng.normal(0.35, 0.05, size=(n, SIZE, SIZE)).astype(np.float32)
    labels = np.arange(n) % 2
    centres = np.full((n, 2), -1)
    for i in np.flatnonzero(labels):
        r, c = rng.integers(BLOB_RADIUS + 2, SIZE - BLOB_RADIUS - 2, size=2)
        images[i][(yy - r) ** 2 + (xx - c) ** 2 <= BLOB_RADIUS**2] += 0.5
        centres[i] = (r, c)
    images = np.clip(images, 0, 1)
    return BlobData(np.repeat(images[..., None], 3, axis=3), labels.astype(np.float32), centres)


def build_blob_model(seed: int = 0) -> Any:
    """Nested conv backbone (like MobileNetV2 inside the outer model) + the paper's head."""
    import keras

    keras.utils.set_random_seed(seed)
    backbone_in = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv_a")(backbone_in)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv_b")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(32, 3, padding="same", name="conv_last")(x)
    x = keras.layers.Activation("relu", name="out_relu")(x)
    backbone = keras.Model(backbone_in, x, name="tiny_backbone")

    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    features = backbone(inputs)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(features)
    h = keras.layers.BatchNormalization(momentum=0.8, name="head_bn")(h)
    h = keras.layers.Dense(16, activation="relu", name="head_dense_0")(h)
    h = keras.layers.Dropout(0.2, name="head_dropout")(h)
    out = keras.layers.Dense(1, activation="sigmoid", name="probability")(h)
    return keras.Model(inputs, out, name="tiny_blob")


def train_blob_model(seed: int = 0) -> Any:
    import keras

    model = build_blob_model(seed)
    data = make_blob_images(400, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy")
    model.fit(data.images, data.labels, epochs=6, batch_size=32, verbose=0)
    return model
