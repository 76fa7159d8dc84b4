"""The paper's preprocessing, driven by a model's registry entry.

uint8 grayscale (H, W) -> float32 RGB (h, w, 3) in [0, 1]: replicate gray to 3 channels,
resize to the model's input size (INTER_AREA when shrinking, INTER_LINEAR when enlarging),
divide by 255. Training (core/training.py) uses this same function, so serving and training
cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def preprocess_gray(pixels: np.ndarray, *, input_size: Sequence[int]) -> np.ndarray:
    """uint8 (H, W) -> float32 (h, w, 3), values X/255. input_size is (height, width)."""
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {pixels.shape}")
    height, width = int(input_size[0]), int(input_size[1])
    shrinking = pixels.shape[0] * pixels.shape[1] > height * width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(pixels, (width, height), interpolation=interpolation)
    rgb = np.repeat(resized[:, :, None], 3, axis=2)
    return rgb.astype(np.float32) / 255.0


def preprocess_batch(images: Sequence[np.ndarray], *, input_size: Sequence[int]) -> np.ndarray:
    """A list of uint8 (H_i, W_i) -> float32 (n, h, w, 3)."""
    return np.stack([preprocess_gray(p, input_size=input_size) for p in images])
