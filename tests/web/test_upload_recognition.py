"""PNG/JPEG uploads no longer depend on a typed body part: the image recogniser proposes the
region and with it the conditions; a condition outside the image's region is refused."""

from __future__ import annotations

import pytest

from tests.core.conftest import SHARED
from tests.web.fixtures import upload
from web.clinical.models import Analysis, Image, Study


def _film(folder: str) -> bytes:
    root = SHARED / "data" / folder / "test"
    if not root.is_dir():
        pytest.skip(f"../shared/data/{folder} is absent")
    return sorted(root.glob("negative/*.jpg"))[0].read_bytes()


def test_a_knee_jpeg_without_a_body_part_is_recognised_and_gets_the_knee_conditions(api, db) -> None:
    response = upload(api, _film("knee_osteoarthritis"), "knee.jpg", patient_id="MRN-RK")

    assert response.status_code == 201, response.content
    body = response.json()
    assert any("recognised from the image" in w for w in body["warnings"])
    assert Study.objects.get().body_part == "KNEE"
    conditions = {a["condition"] for a in body["image"]["analyses"]}
    assert {"knee_osteoarthritis", "knee_osteoporosis"} <= conditions
    assert "pneumonia" not in conditions
    assert Image.objects.get().recognition["region"] == "knee"


def test_a_chest_jpeg_without_a_body_part_gets_the_chest_conditions(api, db) -> None:
    body = upload(api, _film("pneumonia"), "chest.jpg", patient_id="MRN-RC").json()

    assert sorted(a["condition"] for a in body["image"]["analyses"]) == ["cardiomegaly", "pneumonia"]
    assert "chest" in body["image"]["recognition"]["description"]


def test_a_knee_condition_is_refused_for_a_chest_film(api, db) -> None:
    typed = upload(
        api,
        _film("cardiomegaly"),
        "c.jpg",
        patient_id="MRN-X1",
        body_part="CHEST",
        conditions="knee_osteoarthritis",
    )
    seen = upload(api, _film("pneumonia"), "p.jpg", patient_id="MRN-X2", conditions="knee_osteoarthritis")

    for response in (typed, seen):
        assert response.status_code == 400
        assert "Knee osteoarthritis does not apply to this image" in response.json()["error"]
    assert not Analysis.objects.exists() and not Image.objects.exists()


def test_a_body_part_must_be_chosen_from_the_list(api, db) -> None:
    response = upload(api, _film("pneumonia"), "p.jpg", patient_id="MRN-X3", body_part="left lung probably")
    assert response.status_code == 400
    assert "Unknown body part" in str(response.json())


def test_rerunning_a_condition_outside_the_region_is_refused(api, db) -> None:
    body = upload(api, _film("pneumonia"), "p.jpg", patient_id="MRN-X4").json()
    response = api.post(
        f"/api/images/{body['image']['id']}/analyses/", {"conditions": ["fracture"]}, format="json"
    )
    assert response.status_code == 400
    assert "Fracture does not apply" in str(response.json())
    assert Analysis.objects.filter(condition="fracture").count() == 0


def test_the_page_can_ask_which_body_part_a_file_is_before_uploading_it(api, db) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    def propose(data: bytes, name: str):
        return api.post(
            "/api/uploads/recognise/", {"file": SimpleUploadedFile(name, data)}, format="multipart"
        )

    knee = propose(_film("knee_osteoarthritis"), "knee.jpg")
    chest = propose(_film("pneumonia"), "chest.jpg")
    broken = propose(b"not an image at all", "x.png")

    assert knee.status_code == 200 and knee.json()["body_part"] == "KNEE"
    assert chest.json()["body_part"] == "CHEST" and "chest" in chest.json()["description"]
    assert broken.status_code == 400 and broken.json()["error"]
    assert not Image.objects.exists() and not Study.objects.exists()  # nothing stored
