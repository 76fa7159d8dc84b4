"""Conditions know their body parts; preprocessing follows the paper; overlays honour alpha."""

from __future__ import annotations

import numpy as np
import pytest

from core.calibration import apply_calibration
from core.conditions import CONDITIONS, conditions_for_body_part, get_condition
from core.errors import UnknownConditionError
from core.overlay import heatmap_png, render_overlay
from core.preprocessing import preprocess_gray


def test_the_five_conditions_and_their_body_parts():
    assert list(CONDITIONS) == [
        "pneumonia",
        "cardiomegaly",
        "fracture",
        "knee_osteoarthritis",
        "knee_osteoporosis",
    ]
    assert conditions_for_body_part("CHEST") == ["pneumonia", "cardiomegaly"]
    assert conditions_for_body_part("Knee") == ["fracture", "knee_osteoarthritis", "knee_osteoporosis"]
    assert conditions_for_body_part("lower extremity") == conditions_for_body_part("LOWEREXTREMITY")
    assert "pneumonia" not in conditions_for_body_part("KNEE")
    assert conditions_for_body_part(None) == []
    assert not get_condition("pneumonia").allow_horizontal_flip
    assert get_condition("fracture").allow_horizontal_flip


def test_unknown_condition_lists_the_known_ones():
    with pytest.raises(UnknownConditionError, match="knows: pneumonia, cardiomegaly"):
        get_condition("gout")


def test_preprocessing_is_rgb_resized_and_scaled_to_unit_range():
    gray = np.tile(np.linspace(0, 255, 300), (200, 1)).astype(np.uint8)
    out = preprocess_gray(gray, input_size=(128, 96))
    assert out.shape == (128, 96, 3) and out.dtype == np.float32
    assert (out[..., 0] == out[..., 2]).all()
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out[:, 0].mean() < 0.02 and out[:, -1].mean() > 0.98
    assert preprocess_gray(np.full((8, 8), 255, np.uint8), input_size=(16, 16)).min() == 1.0


def test_overlay_keeps_original_resolution_and_alpha_sets_intensity():
    gray = np.full((300, 200), 100, np.uint8)
    heat = np.zeros((8, 8), np.float32)
    heat[0:2, 0:2] = 1.0  # hot top-left corner
    none = render_overlay(gray, heat, alpha=0.0)
    full = render_overlay(gray, heat, alpha=1.0)
    half = render_overlay(gray, heat, alpha=0.5)
    assert none.shape == (300, 200, 3)
    assert (none == 100).all(), "alpha 0 shows the X-ray alone"
    assert full[5, 5, 0] >= 120 and full[5, 5, 2] < 20, "hot = red in JET"
    assert full[290, 190, 2] >= 120 and full[290, 190, 0] < 20, "cold = blue in JET"
    assert none[5, 5, 0] < half[5, 5, 0] < full[5, 5, 0]
    with pytest.raises(ValueError):
        render_overlay(gray, heat, alpha=1.5)


def test_raw_heatmap_png_is_grayscale():
    import cv2

    png = heatmap_png(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8))
    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape == (8, 8) and decoded.max() == 255 and decoded.min() == 0


def test_calibration_temperature_and_platt():
    p = np.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(apply_calibration(p, {"method": "none"}), p)
    softened = apply_calibration(p, {"method": "temperature", "a": 0.5, "b": 0.0})
    assert softened[0] > 0.1 and softened[2] < 0.9 and abs(softened[1] - 0.5) < 1e-9
    shifted = apply_calibration(p, {"method": "platt", "a": 1.0, "b": 2.0})
    assert (shifted > p).all()


def _blob(h: int, w: int, cx: float, cy: float, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-(((xx + 0.5) / w - cx) ** 2 + ((yy + 0.5) / h - cy) ** 2) / (2 * sigma**2)).astype(
        np.float32
    )


def test_the_hot_region_outlines_and_boxes_the_peak_only() -> None:
    from core.overlay import hot_region

    heat = _blob(64, 64, 0.7, 0.3, 0.08) + 0.6 * _blob(64, 64, 0.2, 0.8, 0.05)  # a weaker second spot
    region = hot_region(heat / heat.max())

    assert region["peak"] == pytest.approx([0.7, 0.3], abs=1 / 64)
    x0, y0, x1, y1 = region["box"]
    assert x0 < 0.7 < x1 and y0 < 0.3 < y1
    assert x1 < 0.95 and y1 < 0.55  # the weaker spot (below half the peak) is not in it
    assert all(x0 - 0.02 <= x <= x1 + 0.02 and y0 - 0.02 <= y <= y1 + 0.02 for x, y in region["contour"])
    assert len(region["contour"]) >= 4


def test_a_flat_heat_map_has_no_hot_region() -> None:
    from core.overlay import draw_hot_region, hot_region

    region = hot_region(np.full((16, 16), 0.3, dtype=np.float32))
    assert region["contour"] == [] and region["box"] == []
    picture = np.zeros((32, 32, 3), dtype=np.uint8)
    assert np.array_equal(draw_hot_region(picture, region), picture)  # nothing drawn
