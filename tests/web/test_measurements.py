"""Length measurements: millimetres from the DICOM header's pixel size (PixelSpacing, or
ImagerPixelSpacing said to be at the detector), pixels marked uncalibrated otherwise; the same
figure in the API, the viewer's calibration and the report."""

from __future__ import annotations

from typing import Any

import pytest

from tests.web.fixtures import dicom_bytes, png_bytes, upload, with_role
from web.clinical.review.measure import Spacing, image_spacing, shape_measurement


def line(x1: float, y1: float, x2: float, y2: float) -> dict[str, Any]:
    return {"type": "length", "x1": x1, "y1": y1, "x2": x2, "y2": y2}


def test_a_length_uses_each_axis_own_pixel_size() -> None:
    spacing = Spacing(row_mm=0.2, col_mm=0.1, source="PixelSpacing")
    across, down = (
        shape_measurement(line(0, 0, 100, 0), spacing),
        shape_measurement(line(0, 0, 0, 100), spacing),
    )
    assert (across["value"], across["unit"], across["text"]) == (10.0, "mm", "10.0 mm")
    assert (down["value"], down["text"]) == (20.0, "20.0 mm")
    assert shape_measurement(line(0, 0, 30, 40), Spacing(0.5, 0.5, "PixelSpacing"))["value"] == 25.0
    assert shape_measurement({"type": "arrow", "x1": 0, "y1": 0, "x2": 1, "y2": 1}, spacing) is None


def test_without_a_pixel_size_a_length_is_in_pixels_and_says_uncalibrated() -> None:
    measured = shape_measurement(line(0, 0, 30, 40), image_spacing({}))
    assert measured == {
        "kind": "length",
        "value": 50.0,
        "unit": "px",
        "calibrated": False,
        "source": "",
        "text": "50.0 px (uncalibrated)",
    }
    for broken in ({"PixelSpacing": None}, {"PixelSpacing": ["0", "0.1"]}, {"PixelSpacing": ["x"]}):
        assert image_spacing(broken) is None


@pytest.fixture()
def api(db, django_user_model):
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_login(with_role(django_user_model.objects.create_user("dr.measure"), "radiologist"))
    return client


@pytest.mark.parametrize(
    ("tag", "text"),
    [("PixelSpacing", "40.0 mm"), ("ImagerPixelSpacing", "40.0 mm at the detector")],
)
def test_a_length_on_a_calibrated_dicom_is_in_millimetres_everywhere(api, tag: str, text: str) -> None:
    from web.clinical.models import Annotation, Image
    from web.clinical.reporting.pdf import report_notes

    body = upload(
        api, dicom_bytes(patient_id=f"MRN-MM-{tag}", pixel_spacing=(0.5, 0.25), spacing_tag=tag)
    ).json()
    image_id = body["image"]["id"]
    display = api.get(f"/api/images/{image_id}/display/").json()
    assert display["pixel_spacing"] == {"row_mm": 0.5, "col_mm": 0.25, "source": tag}

    # 160 columns x 0.25 mm = 40 mm.
    made = api.post(
        "/api/annotations/",
        {"image": image_id, "shapes": [line(10, 20, 170, 20)], "note": "femur"},
        format="json",
    )
    assert made.status_code == 201, made.content
    measured = made.json()["measurements"]
    assert [(m["value"], m["unit"], m["calibrated"], m["source"], m["text"]) for m in measured] == [
        (40.0, "mm", True, tag, text)
    ]
    listed = api.get(f"/api/images/{image_id}/annotations/").json()
    assert listed[0]["measurements"] == measured
    image = Image.objects.get(pk=image_id)
    assert Annotation.objects.get(pk=made.json()["id"]).shapes[0]["type"] == "length"
    assert report_notes([image])[0].marks == f"1 mark: length {text}"


def test_a_length_on_a_png_is_in_pixels_and_says_so(api) -> None:
    body = upload(api, png_bytes(size=64), name="knee.png", patient_id="MRN-MM-PNG", body_part="KNEE").json()
    image_id = body["image"]["id"]
    assert api.get(f"/api/images/{image_id}/display/").json()["pixel_spacing"] is None
    made = api.post("/api/annotations/", {"image": image_id, "shapes": [line(0, 0, 30, 40)]}, format="json")
    assert made.json()["measurements"][0]["text"] == "50.0 px (uncalibrated)"


def test_a_finding_the_ai_missed_is_recorded_with_its_condition_and_place(api) -> None:
    from web.clinical.models import AuditEvent, Image
    from web.clinical.reporting.pdf import report_notes

    image_id = upload(api, dicom_bytes(patient_id="MRN-MISSED")).json()["image"]["id"]
    url = "/api/annotations/"
    box = {"type": "rect", "x": 10, "y": 12, "w": 30, "h": 20}

    made = api.post(url, {"image": image_id, "shapes": [box], "missed_condition": "pneumonia"}, format="json")
    no_place = api.post(
        url, {"image": image_id, "note": "there", "missed_condition": "pneumonia"}, format="json"
    )
    unknown = api.post(url, {"image": image_id, "shapes": [box], "missed_condition": "gout"}, format="json")

    assert made.status_code == 201, made.content
    assert made.json()["missed_condition"] == "pneumonia" and made.json()["shapes"][0]["type"] == "rect"
    assert no_place.status_code == 400 and "Draw where the missed finding is" in no_place.json()["error"]
    assert unknown.status_code == 400
    listed = api.get(f"/api/images/{image_id}/annotations/").json()
    assert [a["missed_condition"] for a in listed] == ["pneumonia"]
    audit = AuditEvent.objects.get(action="finding.missed")
    assert audit.detail["condition"] == "pneumonia" and audit.patient.patient_id == "MRN-MISSED"
    assert report_notes([Image.objects.get(pk=image_id)])[0].about == "Missed by the AI: Pneumonia"


def angle(*points: tuple[float, float]) -> dict[str, Any]:
    return {"type": "angle", "points": [list(p) for p in points]}


def test_an_angle_is_in_degrees_from_its_vertex_and_needs_no_calibration() -> None:
    right = angle((100, 0), (0, 0), (0, 100))
    assert shape_measurement(right, None) == {
        "kind": "angle",
        "value": 90.0,
        "unit": "deg",
        "calibrated": False,
        "source": "",
        "text": "90.0°",
    }
    square = Spacing(row_mm=0.2, col_mm=0.2, source="ImagerPixelSpacing")
    assert shape_measurement(right, square)["text"] == "90.0°"  # no "at the detector": an angle
    assert shape_measurement(angle((10, 10), (0, 0), (10, 0)), None)["value"] == 45.0
    assert shape_measurement(angle((10, 0), (0, 0), (-10, 0)), None)["value"] == 180.0
    assert shape_measurement(angle((10, 0), (0, 0), (20, 0)), None)["value"] == 0.0
    assert shape_measurement(angle((0, 0), (0, 0), (5, 5)), None)["value"] == 0.0  # no ray: no angle
    # Which ray comes first does not matter: 0 to 180, never negative or reflex.
    assert shape_measurement(angle((0, 100), (0, 0), (100, 30)), None)["value"] == pytest.approx(
        73.3, abs=0.05
    )
    assert shape_measurement(angle((100, 30), (0, 0), (0, 100)), None)["value"] == pytest.approx(
        73.3, abs=0.05
    )


def test_with_anisotropic_pixels_an_angle_is_the_one_in_physical_space() -> None:
    # 45° on the pixel grid; rows 0.2 mm apart, columns 0.1 mm: the ray is 1 mm across and 2 mm
    # down, so atan(2 / 1) = 63.4° from the horizontal ray.
    diagonal = angle((10, 0), (0, 0), (10, 10))
    assert shape_measurement(diagonal, None)["value"] == 45.0
    measured = shape_measurement(diagonal, Spacing(row_mm=0.2, col_mm=0.1, source="PixelSpacing"))
    assert (measured["value"], measured["calibrated"], measured["source"]) == (63.4, True, "PixelSpacing")
    # A right angle on the grid between two diagonals is not one in the patient.
    tilted = angle((10, -10), (0, 0), (10, 10))
    assert shape_measurement(tilted, None)["value"] == 90.0
    assert shape_measurement(tilted, Spacing(0.2, 0.1, "PixelSpacing"))["value"] == 126.9


def test_an_angle_is_saved_listed_and_reported_with_its_three_points(api) -> None:
    from web.clinical.models import Annotation, Image
    from web.clinical.reporting.pdf import report_notes

    body = upload(api, dicom_bytes(patient_id="MRN-ANGLE", pixel_spacing=(0.2, 0.1))).json()
    image_id = body["image"]["id"]
    # In millimetres: ray one 1 mm across and 2 mm down, ray two 2 mm across: 63.4°.
    shape = angle((20, 30), (10, 20), (30, 20))
    made = api.post(
        "/api/annotations/", {"image": image_id, "shapes": [shape], "note": "Cobb"}, format="json"
    )
    assert made.status_code == 201, made.content
    assert made.json()["shapes"] == [shape]
    assert made.json()["measurements"] == [
        {
            "kind": "angle",
            "value": 63.4,
            "unit": "deg",
            "calibrated": True,
            "source": "PixelSpacing",
            "text": "63.4°",
        }
    ]
    listed = api.get(f"/api/images/{image_id}/annotations/").json()
    assert listed[0]["shapes"] == [shape] and listed[0]["measurements"] == made.json()["measurements"]
    assert Annotation.objects.get(pk=made.json()["id"]).shapes == [shape]
    assert report_notes([Image.objects.get(pk=image_id)])[0].marks == "1 mark: angle 63.4°"

    for points in ([[0, 0], [1, 1]], [[0, 0], [1, 1], [2, 2], [3, 3]], [[0, 0], [1, 1], ["x", 2]]):
        refused = api.post(
            "/api/annotations/",
            {"image": image_id, "shapes": [{"type": "angle", "points": points}]},
            format="json",
        )
        assert refused.status_code == 400, points
    no_points = api.post(
        "/api/annotations/", {"image": image_id, "shapes": [{"type": "angle"}]}, format="json"
    )
    assert no_points.json()["error"].endswith("Shape 0: an angle needs 3 points.")


def test_the_report_draws_an_angle_as_its_two_rays() -> None:
    import numpy as np

    from web.clinical.review.shapes import draw_shape

    canvas = np.zeros((100, 100, 3), np.uint8)
    draw_shape(canvas, angle((90, 50), (10, 50), (10, 5)), colour=(255, 212, 59))
    assert canvas[50, 50].tolist() == [255, 212, 59]  # on the first ray
    assert canvas[30, 10].tolist() == [255, 212, 59]  # on the second
    assert canvas[20, 60].tolist() == [0, 0, 0]  # not between them
