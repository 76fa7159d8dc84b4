"""Measurements on an image drawn by a radiologist, computed here, from the stored shape and the
stored header, for the viewer's list, the API and the report alike:

- a length, in millimetres where the DICOM header calibrates the pixels (PixelSpacing, or
  ImagerPixelSpacing at the detector plane), in pixels otherwise, and always saying which;
- an angle between two rays from a vertex, in degrees (0 to 180). An angle needs no
  calibration, only the shape of a pixel: where the header gives a pixel size it is computed
  in physical space (each axis scaled by its own spacing, which matters when rows and columns
  differ); without one the pixels are taken as square, as the viewer shows them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypedDict


@dataclass(frozen=True)
class Spacing:
    row_mm: float  # between rows: the vertical size of a pixel
    col_mm: float  # between columns: the horizontal size of a pixel
    source: str  # "PixelSpacing" or "ImagerPixelSpacing"


class Measurement(TypedDict):
    kind: str  # "length" or "angle"
    value: float
    unit: str  # "mm" or "px" (length), "deg" (angle)
    calibrated: bool  # an angle: computed with the header's pixel size (else square pixels)
    source: str  # the header attribute that calibrated it; "" when uncalibrated
    text: str  # what the viewer, the list and the report show


SOURCE_WORDS = {
    "PixelSpacing": "",
    "ImagerPixelSpacing": " at the detector",
}


def image_spacing(header: dict[str, Any] | None) -> Spacing | None:
    """The pixel size the stored DICOM header summary gives, or None (PNG, JPEG, no spacing)."""
    values = (header or {}).get("PixelSpacing")
    try:
        row, col = (float(v) for v in values)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(row) and math.isfinite(col)) or row <= 0 or col <= 0:
        return None
    return Spacing(row, col, str((header or {}).get("PixelSpacingSource") or "PixelSpacing"))


def shape_measurement(shape: dict[str, Any], spacing: Spacing | None) -> Measurement | None:
    """The measurement a shape states (a "length" line, an "angle"), or None for a drawing."""
    if shape.get("type") == "angle":
        return angle_measurement(shape, spacing)
    if shape.get("type") != "length":
        return None
    dx = float(shape["x2"]) - float(shape["x1"])
    dy = float(shape["y2"]) - float(shape["y1"])
    if spacing is None:
        pixels = round(math.hypot(dx, dy), 1)
        return {
            "kind": "length",
            "value": pixels,
            "unit": "px",
            "calibrated": False,
            "source": "",
            "text": f"{pixels:.1f} px (uncalibrated)",
        }
    millimetres = round(math.hypot(dx * spacing.col_mm, dy * spacing.row_mm), 1)
    return {
        "kind": "length",
        "value": millimetres,
        "unit": "mm",
        "calibrated": True,
        "source": spacing.source,
        "text": f"{millimetres:.1f} mm{SOURCE_WORDS.get(spacing.source, '')}",
    }


def angle_degrees(points: list[list[float]], spacing: Spacing | None) -> float:
    """The angle at the vertex points[1] between the rays to points[0] and points[2], in degrees
    (0 to 180, one decimal). Image pixel coordinates (x: column, y: row) are scaled to
    millimetres by the column and row spacing first, so with anisotropic pixels the angle is the
    one in the patient (or at the detector), not the one on the pixel grid. A ray of length 0
    has no direction: 0.0."""
    (ax, ay), (vx, vy), (bx, by) = ((float(p[0]), float(p[1])) for p in points[:3])
    sx, sy = (spacing.col_mm, spacing.row_mm) if spacing else (1.0, 1.0)
    ux, uy = (ax - vx) * sx, (ay - vy) * sy
    wx, wy = (bx - vx) * sx, (by - vy) * sy
    if (ux == 0 and uy == 0) or (wx == 0 and wy == 0):
        return 0.0
    return round(math.degrees(math.atan2(abs(ux * wy - uy * wx), ux * wx + uy * wy)), 1)


def angle_measurement(shape: dict[str, Any], spacing: Spacing | None) -> Measurement:
    degrees = angle_degrees(shape["points"], spacing)
    return {
        "kind": "angle",
        "value": degrees,
        "unit": "deg",
        "calibrated": spacing is not None,
        "source": spacing.source if spacing else "",
        "text": f"{degrees:.1f}°",
    }


def annotation_measurements(shapes: list[dict[str, Any]], header: dict[str, Any] | None) -> list[Measurement]:
    spacing = image_spacing(header)
    found = (shape_measurement(shape, spacing) for shape in shapes or [])
    return [m for m in found if m is not None]
