"""Measurements on an image: a length drawn by a radiologist, in millimetres where the DICOM
header calibrates the pixels (PixelSpacing, or ImagerPixelSpacing at the detector plane), in
pixels otherwise, and always saying which. Computed here, from the stored shape and the stored
header, for the viewer's list, the API and the report alike."""

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
    kind: str  # "length"
    value: float
    unit: str  # "mm" or "px"
    calibrated: bool
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
    """The measurement a shape states (a "length" line), or None for a drawing."""
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


def annotation_measurements(shapes: list[dict[str, Any]], header: dict[str, Any] | None) -> list[Measurement]:
    spacing = image_spacing(header)
    found = (shape_measurement(shape, spacing) for shape in shapes or [])
    return [m for m in found if m is not None]
