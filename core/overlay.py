"""Heat-map overlays at the original image resolution (OpenCV JET colormap)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def render_overlay(gray: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.4) -> np.ndarray:
    """uint8 gray (H, W) + float heatmap (h, w) in [0, 1] -> uint8 RGB (H, W, 3).

    alpha is the heat map's intensity: 0 shows the X-ray alone, 1 the heat map alone.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    height, width = gray.shape[:2]
    heat = cv2.resize(
        np.clip(heatmap, 0.0, 1.0).astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR
    )
    colour = colorize_heatmap(heat)
    base = np.repeat(gray[:, :, None], 3, axis=2).astype(np.float32)
    blended = (1.0 - alpha) * base + alpha * colour.astype(np.float32)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def colorize_heatmap(heat: np.ndarray) -> np.ndarray:
    """float (H, W) in [0, 1] -> uint8 RGB JET colours (blue = low, red = high)."""
    bgr = cv2.applyColorMap(np.round(heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode_png(image: np.ndarray) -> bytes:
    """uint8 gray (H, W) or RGB (H, W, 3) -> PNG bytes."""
    array = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".png", array)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buffer.tobytes()


def save_png(path: str | Path, image: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(image))
    return path


def heatmap_png(heatmap: np.ndarray) -> bytes:
    """The raw heat map as an 8-bit grayscale PNG, so a viewer can re-blend at any intensity."""
    return encode_png(np.round(np.clip(heatmap, 0.0, 1.0) * 255).astype(np.uint8))
