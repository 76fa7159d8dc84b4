"""Where does a heat map point? Its hottest point, and whether a point lies in a box.

Everything is in fractions of the image's width and height, so a box drawn on the original film
applies unchanged to the model's resized input (RadTriage resizes without keeping the aspect
ratio, core.preprocessing.resize_gray). The pointing game that scores maps against boxed films
is offline evaluation: core.training.pointing_game.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions, x0 < x1, y0 < y1
Point = tuple[float, float]  # x, y as fractions; NaN for a map with no peak
CENTRE: Point = (0.5, 0.5)


def heatmap_peak(heatmap: np.ndarray) -> Point:
    """float (h, w) -> (x, y) of the hottest point as fractions of width and height.

    Pixel (r, c) stands for its centre ((c + 0.5) / w, (r + 0.5) / h). Grad-CAM maps are clipped
    to [0, 1] after an upsampling that overshoots, so the peak is often a plateau of equal
    values: the plateau pixel nearest the plateau's centroid is returned, not the first one in
    raster order (which would bias peaks up and left). A flat map points nowhere: (nan, nan).
    """
    heat = np.asarray(heatmap, dtype=np.float64)
    if heat.ndim != 2 or heat.size == 0:
        raise ValueError(f"expected a 2-D heat map, got shape {heat.shape}")
    finite = np.where(np.isfinite(heat), heat, -np.inf)
    top, low = finite.max(), finite.min()
    if not np.isfinite(top) or top <= low:
        return (math.nan, math.nan)
    rows, cols = np.nonzero(finite >= top - 1e-6 * max(1.0, abs(top)))
    nearest = np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2)
    h, w = heat.shape
    return ((cols[nearest] + 0.5) / w, (rows[nearest] + 0.5) / h)


def heatmap_peaks(heatmaps: np.ndarray) -> list[Point]:
    """float (n, h, w) -> n peaks (heatmap_peak of each map)."""
    return [heatmap_peak(h) for h in np.asarray(heatmaps)]


def point_in_boxes(point: Point, boxes: Sequence[Box], *, tolerance: float = 0.0) -> bool:
    """Inside any box, each box grown by `tolerance` (a fraction of the image) on every side."""
    x, y = point
    if not (math.isfinite(x) and math.isfinite(y)):
        return False
    t = tolerance
    return any(x0 - t <= x <= x1 + t and y0 - t <= y <= y1 + t for x0, y0, x1, y1 in boxes)
