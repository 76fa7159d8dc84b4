"""Uploads tell the uploader what the server did with each file, in the server's own words."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from tests.web.fixtures import dicom_bytes, png_bytes, upload


def technologist_api(django_user_model: Any) -> APIClient:
    user = django_user_model.objects.create_user("tech.tara", password="pw-tech")
    user.groups.add(Group.objects.get(name="technologist"))
    client = APIClient()
    client.force_login(user)
    return client


def test_each_file_of_a_bulk_upload_says_what_happened_to_it(db, django_user_model) -> None:
    api = technologist_api(django_user_model)
    chest = dicom_bytes(patient_id="MRN-OUT-1", accession="ACC-OUT-1", seed=11)
    first = upload(api, chest, "chest.dcm", conditions="pneumonia").json()

    response = api.post(
        "/api/uploads/batch/",
        {
            "files": [
                SimpleUploadedFile("again.dcm", chest),
                SimpleUploadedFile(
                    "skull.dcm", dicom_bytes(patient_id="MRN-OUT-2", body_part="SKULL", seed=12)
                ),
                SimpleUploadedFile("broken.dcm", b"not an x-ray"),
            ]
        },
        format="multipart",
    )
    outcomes = {r["filename"]: r["outcome"] for r in response.json()["results"]}

    assert first["outcome"].startswith("Stored in study ACC-OUT-1 of patient MRN-OUT-1")
    assert first["outcome"].endswith("Analyses queued: pneumonia.")
    assert outcomes["again.dcm"].startswith(
        "Duplicate: already stored in study ACC-OUT-1 of patient MRN-OUT-1"
    )
    assert "pneumonia (queued)" in outcomes["again.dcm"]
    assert "No analysis queued: No RadTriage model applies to body part 'SKULL'" in outcomes["skull.dcm"]
    assert outcomes["broken.dcm"].startswith("Refused: ")
    assert len(outcomes["broken.dcm"]) > len("Refused: ") + 10


def test_a_png_gets_its_own_patient_and_one_without_is_filed_as_unidentified(db, django_user_model) -> None:
    api = technologist_api(django_user_model)

    missing = upload(api, png_bytes(seed=21), "nobody.png")
    stored = upload(api, png_bytes(seed=22), "knee.png", patient_id="MRN-PNG-1", body_part="KNEE")

    # The one patient-ID rule of every route: a generated, labelled ID, and the upload says so.
    assert missing.status_code == 201
    assert missing.json()["study"]["patient"]["patient_id"].startswith("UNIDENTIFIED-")
    assert any("No patient ID came with this file" in w for w in missing.json()["warnings"])
    assert stored.status_code == 201
    assert "of patient MRN-PNG-1, body part KNEE" in stored.json()["outcome"]
    assert stored.json()["study"]["patient"]["patient_id"] == "MRN-PNG-1"
