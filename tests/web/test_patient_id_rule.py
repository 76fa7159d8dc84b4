"""One patient-ID rule on every route: a file that brings no patient ID (a PNG/JPEG without
patient fields, a DICOM without PatientID) is filed under a generated, labelled ID
(UNIDENTIFIED-..., "(unidentified)"), and the upload says so; never under its file name."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from rest_framework.test import APIClient

from tests.web.fixtures import dicom_bytes, png_bytes, upload, with_role
from tests.web.test_batches import post_archive, zip_of
from web.clinical.models import BatchItem, Image, UploadConflict

UNIDENTIFIED = r"UNIDENTIFIED-[0-9A-F]{12}"
SAID = "No patient ID came with this file: it is filed under UNIDENTIFIED-"


@pytest.fixture()
def parked_broker(private_redis: Any, broker_switch: Any) -> None:
    """Batch jobs go to a Redis of our own that no worker reads."""
    broker_switch(f"redis://127.0.0.1:{private_redis[1]}/0")


@pytest.fixture()
def tech(transactional_db: Any, django_user_model: Any) -> APIClient:
    user = with_role(django_user_model.objects.create_user("tech.uma", password="pw-tech-1"), "technologist")
    client = APIClient()
    client.force_login(user)
    return client


def by_upload(api: APIClient, data: bytes, name: str, tmp: Path) -> dict[str, Any]:
    body = upload(api, data, name).json()
    return {"patient": body["study"]["patient"], "said": " ".join(body["warnings"])}


def by_bulk_upload(api: APIClient, data: bytes, name: str, tmp: Path) -> dict[str, Any]:
    body = api.post("/api/uploads/batch/", {"files": [SimpleUploadedFile(name, data)]}, format="multipart")
    [result] = body.json()["results"]
    image = Image.objects.select_related("study__patient").get(pk=result["image_id"])
    return {"patient": _patient(image), "said": " ".join(result["warnings"])}


def by_browser_batch(api: APIClient, data: bytes, name: str, tmp: Path) -> dict[str, Any]:
    body = api.post("/api/batches/", {"files": [SimpleUploadedFile(name, data)]}, format="multipart").json()
    return _batch_item(body["batch"])


def by_archive_batch(api: APIClient, data: bytes, name: str, tmp: Path) -> dict[str, Any]:
    body = post_archive(api, zip_of([(f"ward/{name}", data)])).json()
    return _batch_item(body["batch"])


def by_import_batch(api: APIClient, data: bytes, name: str, tmp: Path) -> dict[str, Any]:
    folder = tmp / f"import-{name}"
    folder.mkdir()
    (folder / name).write_bytes(data)
    out = io.StringIO()
    call_command("import_batch", str(folder), "--json", stdout=out, stderr=io.StringIO())
    return _batch_item(json.loads(out.getvalue())["batch"])


def _patient(image: Image) -> dict[str, Any]:
    patient = image.study.patient
    return {"patient_id": patient.patient_id, "name": patient.name}


def _batch_item(batch_id: int) -> dict[str, Any]:
    [item] = BatchItem.objects.filter(batch_id=batch_id).select_related("image__study__patient")
    assert item.image is not None, item.reason
    return {"patient": _patient(item.image), "said": item.reason, "patient_from": item.patient_from}


ROUTES = [by_upload, by_bulk_upload, by_browser_batch, by_archive_batch, by_import_batch]


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.__name__)
def test_a_file_without_patient_fields_is_filed_as_unidentified_and_the_upload_says_so(
    route, tech, parked_broker, tmp_path
) -> None:
    got = route(tech, png_bytes(seed=41), "IMG_0412.png", tmp_path)

    assert got["patient"]["name"] == "(unidentified)"
    assert got["patient"]["patient_id"] != "IMG_0412"  # a file name is not an MRN
    assert re.fullmatch(UNIDENTIFIED, got["patient"]["patient_id"])
    assert SAID in got["said"] and got["patient"]["patient_id"] in got["said"]
    if "patient_from" in got:
        assert got["patient_from"] == "unidentified"


def test_every_route_files_the_same_file_under_the_same_id_and_a_second_send_is_a_duplicate(
    tech, parked_broker, tmp_path
) -> None:
    data = png_bytes(seed=42)
    results = [route(tech, data, "scan.png", tmp_path) for route in ROUTES]

    assert len({r["patient"]["patient_id"] for r in results}) == 1
    assert Image.objects.count() == 1 and not UploadConflict.objects.exists()


def test_a_dicom_without_a_patient_id_follows_the_same_rule(tech, parked_broker, tmp_path) -> None:
    got = by_upload(tech, dicom_bytes(patient_id="", patient_name="", seed=43), "anon.dcm", tmp_path)
    assert got["patient"]["name"] == "(unidentified)" and SAID in got["said"]
    assert re.fullmatch(UNIDENTIFIED, got["patient"]["patient_id"])


def test_a_file_with_a_patient_id_is_filed_under_it(tech, parked_broker, tmp_path) -> None:
    response = upload(tech, png_bytes(seed=44), "knee.png", patient_id="MRN-PID-1", patient_name="Doe^Jane")
    body = response.json()
    assert body["study"]["patient"]["patient_id"] == "MRN-PID-1" and not any(
        SAID in w for w in body["warnings"]
    )
