"""The reading room's API: full-resolution pixels for the viewer, annotations (their authors
alone change them), verdicts (one current verdict per radiologist per result), and who may
do what (radiologist, technologist, someone in no role, an outsider)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from django.contrib.auth.models import Group
from rest_framework.test import APIClient

from tests.web.fixtures import dicom_bytes, upload
from web.clinical.models import Analysis, Annotation, AuditEvent

RECT = {"type": "rect", "x": 10, "y": 12, "w": 30, "h": 20}


def _person(django_user_model: Any, username: str, role: str | None) -> APIClient:
    user = django_user_model.objects.create_user(username, password=f"pw-{username}")
    if role:
        user.groups.add(Group.objects.get_or_create(name=role)[0])
    client = APIClient()
    client.force_login(user)
    return client


@pytest.fixture()
def dr_a(db, django_user_model) -> APIClient:
    return _person(django_user_model, "dr.a", "radiologist")


@pytest.fixture()
def dr_b(db, django_user_model) -> APIClient:
    return _person(django_user_model, "dr.b", "radiologist")


@pytest.fixture()
def tech(db, django_user_model) -> APIClient:
    return _person(django_user_model, "tech.t", "technologist")


@pytest.fixture()
def image_with_result(dr_a) -> dict[str, Any]:
    """An uploaded DICOM whose pneumonia analysis finished (as a worker would leave it)."""
    body = upload(dr_a, dicom_bytes(size=96, seed=3), conditions="pneumonia,cardiomegaly").json()
    by_condition = {a["condition"]: a["id"] for a in body["image"]["analyses"]}
    Analysis.objects.filter(pk=by_condition["pneumonia"]).update(
        state="succeeded",
        probability=0.91,
        threshold=0.5,
        positive=True,
        applicable=True,
        model_id="pneumonia-mobilenetv2-128-v1",
        model_sha256="ab" * 32,
    )
    Analysis.objects.filter(pk=by_condition["cardiomegaly"]).update(
        state="succeeded", probability=0.9, positive=True, is_placeholder=True, placeholder_reason="missing"
    )
    return {"image": body["image"]["id"], "study": body["study"]["id"], **by_condition}


def test_a_radiologist_draws_edits_and_deletes_their_own_annotation(dr_a, image_with_result) -> None:
    image = image_with_result["image"]
    created = dr_a.post(
        f"/api/images/{image}/annotations/", {"shapes": [RECT], "note": "opacity?"}, format="json"
    )
    assert created.status_code == 201, created.content
    annotation = created.json()
    assert annotation["author"] == "dr.a" and annotation["shapes"] == [RECT]
    listed = dr_a.get(f"/api/images/{image}/annotations/").json()
    assert [(a["id"], a["note"]) for a in listed] == [(annotation["id"], "opacity?")]

    changed = dr_a.patch(f"/api/annotations/{annotation['id']}/", {"note": "consolidation"}, format="json")
    assert changed.status_code == 200 and changed.json()["note"] == "consolidation"
    assert dr_a.delete(f"/api/annotations/{annotation['id']}/").status_code == 204
    assert dr_a.get(f"/api/images/{image}/annotations/").json() == []

    actions = list(
        AuditEvent.objects.filter(object_type="annotation", object_id=str(annotation["id"]))
        .order_by("at", "id")
        .values_list("action", "actor_label")
    )
    assert actions == [
        ("annotation.create", "dr.a"),
        ("annotation.update", "dr.a"),
        ("annotation.delete", "dr.a"),
    ]


def test_a_colleague_sees_an_annotation_but_cannot_change_or_delete_it(dr_a, dr_b, image_with_result) -> None:
    image = image_with_result["image"]
    mine = dr_a.post(f"/api/images/{image}/annotations/", {"shapes": [RECT], "note": "mine"}, format="json")
    pk = mine.json()["id"]

    assert [a["note"] for a in dr_b.get(f"/api/images/{image}/annotations/").json()] == ["mine"]
    edit = dr_b.patch(f"/api/annotations/{pk}/", {"note": "hijacked"}, format="json")
    delete = dr_b.delete(f"/api/annotations/{pk}/")

    assert edit.status_code == 403 and "author" in edit.json()["error"]
    assert delete.status_code == 403
    assert Annotation.objects.get(pk=pk).note == "mine"


def test_a_technologist_sees_annotations_but_cannot_annotate_or_judge(dr_a, tech, image_with_result) -> None:
    image, analysis = image_with_result["image"], image_with_result["pneumonia"]
    pk = dr_a.post(f"/api/images/{image}/annotations/", {"shapes": [RECT]}, format="json").json()["id"]

    assert tech.get(f"/api/images/{image}/annotations/").status_code == 200
    refused = [
        tech.post(f"/api/images/{image}/annotations/", {"shapes": [RECT]}, format="json"),
        tech.post("/api/annotations/", {"image": image, "shapes": [RECT]}, format="json"),
        tech.patch(f"/api/annotations/{pk}/", {"note": "x"}, format="json"),
        tech.delete(f"/api/annotations/{pk}/"),
        tech.put(f"/api/analyses/{analysis}/verdict/", {"verdict": "agree"}, format="json"),
    ]

    assert [r.status_code for r in refused] == [403] * 5
    assert "may not review" in refused[0].json()["error"]
    assert Annotation.objects.count() == 1


def test_someone_in_no_role_sees_nothing_and_an_outsider_must_log_in(
    db, django_user_model, image_with_result
) -> None:
    nobody = _person(django_user_model, "no.role", None)
    image, analysis = image_with_result["image"], image_with_result["pneumonia"]
    paths = [
        f"/api/images/{image}/display/",
        f"/api/images/{image}/pixels/",
        f"/api/images/{image}/annotations/",
        f"/api/analyses/{analysis}/verdict/",
        "/api/verdicts/counts/",
    ]

    assert [nobody.get(p).status_code for p in paths] == [403] * 5
    assert [APIClient().get(p).status_code for p in paths] == [401] * 5


def test_one_current_verdict_per_radiologist_per_finding_counted_per_model(
    dr_a, dr_b, image_with_result
) -> None:
    analysis = image_with_result["pneumonia"]
    url = f"/api/analyses/{analysis}/verdict/"

    first = dr_a.put(url, {"verdict": "agree", "comment": "clear"}, format="json")
    why_not = dr_a.put(url, {"verdict": "disagree", "comment": "artefact"}, format="json")
    changed = dr_a.put(
        url, {"verdict": "disagree", "reason": "false_positive", "comment": "artefact"}, format="json"
    )
    other = dr_b.put(url, {"verdict": "disagree", "reason": "wrong_location"}, format="json")

    # A disagreement says why; the reasons are listed when it does not.
    assert why_not.status_code == 400 and "false_positive, wrong_location" in why_not.json()["error"]
    assert (first.status_code, changed.status_code, other.status_code) == (201, 200, 201)
    assert changed.json()["id"] == first.json()["id"]
    assert changed.json()["reason_label"] == "False positive: no such finding"
    verdicts = {v["author"]: (v["verdict"], v["reason"], v["comment"]) for v in dr_a.get(url).json()}
    assert verdicts == {
        "dr.a": ("disagree", "false_positive", "artefact"),
        "dr.b": ("disagree", "wrong_location", ""),
    }
    counts = dr_a.get("/api/verdicts/counts/").json()
    assert counts == [
        {
            "model_id": "pneumonia-mobilenetv2-128-v1",
            "model_sha256": "ab" * 32,
            "condition": "pneumonia",
            "ai_result": "finding",
            "verdict": "disagree",
            "count": 2,
        }
    ]
    assert AuditEvent.objects.filter(action="verdict.set").count() == 3
    # Agreeing again takes the reason away: it belonged to the disagreement.
    assert (
        dr_b.put(url, {"verdict": "agree", "reason": "wrong_location"}, format="json").json()["reason"] == ""
    )
    # Verdicts are shown on their result, never drawn on the image as annotations.
    assert dr_a.get(f"/api/images/{image_with_result['image']}/annotations/").json() == []


def test_a_verdict_on_a_placeholder_or_unfinished_result_is_refused(dr_a, image_with_result) -> None:
    placeholder = dr_a.put(
        f"/api/analyses/{image_with_result['cardiomegaly']}/verdict/", {"verdict": "agree"}, format="json"
    )
    unknown = dr_a.put(
        f"/api/analyses/{image_with_result['pneumonia']}/verdict/", {"verdict": "maybe"}, format="json"
    )

    assert placeholder.status_code == 400 and "no finding to judge" in placeholder.json()["error"]
    assert unknown.status_code == 400
    assert not Annotation.objects.exclude(verdict="").exists()


@pytest.mark.parametrize(
    "shapes,message",
    [
        ({"type": "rect"}, "JSON list"),
        ([{"type": "star", "x": 1}], "type must be one of"),
        ([{"type": "rect", "x": 1, "y": 2, "w": "wide", "h": 3}], "finite number"),
        ([{"type": "freehand", "points": [[1, 2]]}], "2 to"),
        ([], "a shape or a note"),
    ],
)
def test_malformed_shapes_are_refused_with_a_reason(dr_a, image_with_result, shapes, message) -> None:
    response = dr_a.post(
        f"/api/images/{image_with_result['image']}/annotations/", {"shapes": shapes}, format="json"
    )

    assert response.status_code == 400 and message in str(response.json())
    assert not Annotation.objects.exists()


def test_the_viewer_gets_the_dicom_values_losslessly_with_the_header_window(dr_a, db) -> None:
    import cv2
    import pydicom
    from pydicom.pixels import apply_modality_lut

    raw = dicom_bytes(size=64, seed=7)
    ds = pydicom.dcmread(io.BytesIO(raw))
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = 500, 1800
    buffer = io.BytesIO()
    ds.save_as(buffer)
    image = upload(dr_a, buffer.getvalue()).json()["image"]["id"]

    meta = dr_a.get(f"/api/images/{image}/display/").json()
    pixels = dr_a.get(meta["pixels_url"])

    assert (meta["width"], meta["height"], meta["encoding"]) == (64, 64, "rg16")
    assert meta["window"] == {"center": 500.0, "width": 1800.0} and meta["invert"] is False
    assert pixels["Content-Type"] == "image/png"
    bgr = cv2.imdecode(np.frombuffer(pixels.content, np.uint8), cv2.IMREAD_COLOR)
    codes = bgr[..., 2].astype(np.int64) * 256 + bgr[..., 1]
    expected = apply_modality_lut(ds.pixel_array, ds)
    np.testing.assert_array_equal(codes * meta["scale"] + meta["offset"], expected)
    assert AuditEvent.objects.filter(action="image.view", object_id=str(image)).count() == 1


def test_the_card_offers_verdict_and_rerun_only_to_a_radiologist(dr_a, tech, image_with_result) -> None:
    card = f"/analyses/{image_with_result['pneumonia']}/card/"
    dr_a.put(
        f"/api/analyses/{image_with_result['pneumonia']}/verdict/",
        {"verdict": "uncertain", "comment": "needs CT"},
        format="json",
    )

    for_radiologist = dr_a.get(card).content.decode()
    for_technologist = tech.get(card).content.decode()

    assert 'class="verdict-form"' in for_radiologist and 'class="rerun-form"' in for_radiologist
    assert 'value="uncertain" checked' in for_radiologist
    assert "dr.a</b>: Uncertain — needs CT" in for_technologist
    assert "verdict-form" not in for_technologist and "rerun-form" not in for_technologist
    study_page = tech.get(f"/studies/{image_with_result['study']}/").content.decode()
    assert "annotate-tools" not in study_page and "viewer-canvas" in study_page
