"""viewer: read-only queries."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from web.clinical.models import Analysis, Image
from web.clinical.review.measure import image_spacing

OVERLAY_ALPHA = 0.4  # the heat map's default intensity over the X-ray


def analysis_heatmap_overlay_png(*, analysis: Analysis, alpha: float = OVERLAY_ALPHA) -> bytes:
    """The Grad-CAM map in JET colours over the X-ray at its full resolution.

    Drawn on request from the stored image and raw map (numpy/OpenCV, no TensorFlow): the
    worker does not spend a full-resolution PNG on every analysis, most of which nobody opens.
    """
    from core.imaging import load_xray
    from core.overlay import encode_png, render_overlay

    with analysis.image.file.open("rb") as handle:
        xray = load_xray(handle.read(), max_pixels=settings.RADTRIAGE_MAX_PIXELS)
    return encode_png(render_overlay(xray.pixels, _raw_heatmap(analysis), alpha=alpha))


def analysis_heatmap_color_png(*, analysis: Analysis) -> bytes:
    """The Grad-CAM map alone, in JET colours, for the page to lay over the X-ray at any
    intensity (CSS opacity gives exactly core.overlay's (1 - alpha) * X-ray + alpha * colour)."""
    from core.overlay import colorize_heatmap, encode_png

    return encode_png(colorize_heatmap(_raw_heatmap(analysis)))


def analysis_hot_region(*, analysis: Analysis) -> Any:
    """core.overlay.hot_region of the stored map: the outline, box and peak the viewer and the
    report draw on a finding (fractions of the image's width and height)."""
    from core.overlay import hot_region

    return hot_region(_raw_heatmap(analysis))


def _raw_heatmap(analysis: Analysis) -> Any:
    """float32 (h, w) in [0, 1] from the stored 8-bit map."""
    import cv2
    import numpy as np

    with analysis.heatmap_raw.open("rb") as handle:
        raw = cv2.imdecode(np.frombuffer(handle.read(), np.uint8), cv2.IMREAD_GRAYSCALE)
    if raw is None:
        raise ValueError(f"The stored heat map of analysis {analysis.pk} is unreadable.")
    return raw.astype(np.float32) / 255.0


def image_display(*, image: Image) -> tuple[dict[str, Any], bytes]:
    """The full pixel matrix for the study page's viewer, losslessly, and how to show it.

    DICOM: the stored values after the modality LUT (DICOM order: the page applies the window
    and then the MONOCHROME1 inversion), packed as 16-bit codes into an RGB PNG (R = high
    byte, G = low byte) because a browser decodes every PNG to 8 bits per channel;
    value = code * scale + offset. PNG/JPEG: the stored file itself (8-bit).
    Returns (description for the page, PNG/JPEG bytes).
    """
    meta, pixels = _display(image)
    spacing = image_spacing(image.dicom_header)
    # The length tool's calibration (review.measure): millimetres per pixel, or None.
    meta["pixel_spacing"] = (
        None
        if spacing is None
        else {"row_mm": spacing.row_mm, "col_mm": spacing.col_mm, "source": spacing.source}
    )
    return meta, pixels


def _display(image: Image) -> tuple[dict[str, Any], bytes]:
    with image.file.open("rb") as handle:
        data = handle.read()
    if image.format != Image.Format.DICOM:
        meta = {
            "encoding": "rgb8",
            "content_type": "image/png" if image.format == Image.Format.PNG else "image/jpeg",
            "offset": 0.0,
            "scale": 1.0,
            "invert": False,
            "window": {"center": 127.5, "width": 256.0},
            "range": {"min": 0.0, "max": 255.0},
        }
        return meta, data
    return _dicom_display(data)


def _dicom_display(data: bytes) -> tuple[dict[str, Any], bytes]:
    import cv2
    import numpy as np

    from core.imaging import load_dicom_values

    dicom = load_dicom_values(data, max_pixels=settings.RADTRIAGE_MAX_PIXELS)
    values = dicom.values
    lo, hi = float(values.min()), float(values.max())
    integral = bool(np.all(values == np.round(values)))
    scale = 1.0 if integral and hi - lo <= 65535 else max(hi - lo, 1e-9) / 65535.0
    codes = np.round((values - lo) / scale).astype(np.uint16)
    bgr = np.zeros((*codes.shape, 3), dtype=np.uint8)
    bgr[..., 2] = codes >> 8
    bgr[..., 1] = codes & 0xFF
    ok, buffer = cv2.imencode(".png", bgr)
    if not ok:
        raise ValueError("PNG encoding of the pixel data failed")
    center, width = dicom.window or ((lo + hi) / 2.0, max(hi - lo, 1.0))
    p1, p99 = (float(v) for v in np.percentile(values, [1, 99]))
    meta = {
        "encoding": "rg16",
        "content_type": "image/png",
        "offset": lo,
        "scale": scale,
        "invert": dicom.monochrome1,
        "window": {"center": center, "width": width},
        "range": {"min": lo, "max": hi},
        "auto_window": {"center": (p1 + p99) / 2.0, "width": max(p99 - p1, 1.0)},
    }
    return meta, buffer.tobytes()


def analysis_heatmap_raw(*, analysis: Analysis) -> Any:
    """The stored Grad-CAM map as float32 (h, w) in [0, 1] (for DICOM results)."""
    return _raw_heatmap(analysis)
