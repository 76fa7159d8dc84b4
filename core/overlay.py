"""Heat-map overlays at the original image resolution (OpenCV JET colormap)."""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

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


HOT_LEVEL = 0.5  # the hot region: where the map reaches half its peak


class HotRegion(TypedDict):
    level: float
    peak: list[float]
    box: list[float]
    contour: list[list[float]]


def hot_region(heatmap: np.ndarray, *, level: float = HOT_LEVEL) -> HotRegion:
    """Where a heat map is hot, as fractions of the image's width and height (the map is
    stretched over the whole image): the outline of the connected region around the peak at
    `level` x its peak, that region's bounding box, and the peak itself.

    {"level": 0.5, "peak": [x, y], "box": [x0, y0, x1, y1], "contour": [[x, y], ...]};
    an empty contour and box when the map is flat (no region stands out)."""
    heat = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0)
    h, w = heat.shape[:2]
    peak_y, peak_x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    top, bottom = float(heat.max()), float(heat.min())
    peak = [round((peak_x + 0.5) / w, 4), round((peak_y + 0.5) / h, 4)]
    if top - bottom < 1e-6:
        return {"level": level, "peak": peak, "box": [], "contour": []}
    mask = (heat >= bottom + level * (top - bottom)).astype(np.uint8)
    count, labels = cv2.connectedComponents(mask)
    region = (labels == labels[peak_y, peak_x]).astype(np.uint8)
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    outline = max(contours, key=cv2.contourArea)[:, 0, :]
    x, y, bw, bh = cv2.boundingRect(outline)
    return {
        "level": level,
        "peak": peak,
        "box": [round(x / w, 4), round(y / h, 4), round((x + bw) / w, 4), round((y + bh) / h, 4)],
        "contour": [[round((px + 0.5) / w, 4), round((py + 0.5) / h, 4)] for px, py in outline],
    }


def draw_hot_region(
    rgb: np.ndarray, region: HotRegion, *, colour: tuple[int, int, int] = (255, 255, 255)
) -> np.ndarray:
    """Outline the hot region and box it on an RGB image (a copy), as the viewer does."""
    out = np.ascontiguousarray(rgb.copy())
    height, width = out.shape[:2]
    thickness = max(2, round(max(height, width) / 400))
    if region["contour"]:
        points = np.array([[round(x * width), round(y * height)] for x, y in region["contour"]], np.int32)
        cv2.polylines(out, [points], True, colour, thickness)
    if region["box"]:
        x0, y0, x1, y1 = region["box"]
        corner0 = (round(x0 * width), round(y0 * height))
        corner1 = (round(x1 * width), round(y1 * height))
        cv2.rectangle(out, corner0, corner1, (255, 212, 59), thickness)
    return out
