"""Drawing the team's annotation shapes onto an image (reports), in the format the viewer
saves (web.clinical.review.annotations.shapes_clean), in image pixels:
rect / ellipse {x, y, w, h}; arrow, length {x1, y1, x2, y2}; freehand {points: [[x, y], ...]};
angle {points: [end, vertex, end]}; text {x, y, text}."""

from __future__ import annotations

from typing import Any

import numpy as np


def shape_points(shape: dict[str, Any], *, width: int, height: int) -> list[tuple[int, int]]:
    raw = shape.get("points")
    if raw is None and {"x1", "y1", "x2", "y2"} <= shape.keys():
        raw = [[shape["x1"], shape["y1"]], [shape["x2"], shape["y2"]]]
    elif raw is None and {"x", "y"} <= shape.keys():
        x, y = float(shape["x"]), float(shape["y"])
        raw = [[x, y], [x + float(shape.get("w", 0)), y + float(shape.get("h", 0))]]
    return [(round(float(p[0])), round(float(p[1]))) for p in raw or []]


def draw_shape(canvas: np.ndarray, shape: dict[str, Any], *, colour: tuple[int, int, int]) -> None:
    """Draw in place on an RGB uint8 canvas; an unreadable shape is skipped, never fatal."""
    import cv2

    height, width = canvas.shape[:2]
    thickness = max(2, round(max(height, width) / 300))
    kind = str(shape.get("type") or shape.get("kind") or "")
    try:
        points = shape_points(shape, width=width, height=height)
    except (TypeError, ValueError, IndexError):
        return
    if not points:
        return
    if kind in ("rect", "rectangle") and len(points) >= 2:
        cv2.rectangle(canvas, points[0], points[1], colour, thickness)
    elif kind == "ellipse" and len(points) >= 2:
        (x0, y0), (x1, y1) = points[0], points[1]
        centre = ((x0 + x1) // 2, (y0 + y1) // 2)
        axes = (max(1, abs(x1 - x0) // 2), max(1, abs(y1 - y0) // 2))
        cv2.ellipse(canvas, centre, axes, 0, 0, 360, colour, thickness)
    elif kind == "length" and len(points) >= 2:  # a measurement: the line, the value is listed
        cv2.line(canvas, points[0], points[1], colour, thickness)
        for end in points[:2]:
            cv2.circle(canvas, end, thickness * 2, colour, -1)
    elif kind == "angle" and len(points) == 3:  # a measurement: the two rays, the value is listed
        cv2.polylines(canvas, [np.array(points, np.int32)], False, colour, thickness)
        cv2.circle(canvas, points[1], thickness * 2, colour, -1)
    elif kind == "arrow" and len(points) >= 2:
        cv2.arrowedLine(canvas, points[0], points[1], colour, thickness, tipLength=0.2)
    elif kind == "freehand" and len(points) >= 2:
        cv2.polylines(canvas, [np.array(points, np.int32)], False, colour, thickness)
    elif kind in ("text", "note"):
        scale = max(0.6, max(height, width) / 900)
        cv2.putText(
            canvas,
            str(shape.get("text", ""))[:80],
            points[0],
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            colour,
            thickness,
        )
