"""Uploads under faults: the media disk full (a real 2 MiB tmpfs as MEDIA_ROOT)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.web.fixtures import dicom_bytes, upload
from web.clinical.files import UPLOAD_JOURNALS
from web.clinical.models import Analysis, Image, Patient, Study


@pytest.fixture()
def full_media(tmp_path: Path, settings: Any) -> Iterator[Path]:
    """MEDIA_ROOT on a 2 MiB tmpfs (needs root, as on the test machines)."""
    folder = tmp_path / "media"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root)")
    settings.MEDIA_ROOT = str(folder)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and UPLOAD_JOURNALS not in p.parts)


def test_an_upload_that_fills_the_media_disk_is_refused_with_a_message_and_leaves_nothing(
    api, db, full_media: Path
) -> None:
    """What the uploader sees: 507 and "The image storage is full ... send it again"; no
    patient, study, image or analysis appears, and no half-written file stays on the disk.
    Once there is room again the same file goes in."""
    big = dicom_bytes(patient_id="MRN-DISKFULL", size=1100)  # 2.3 MiB of pixels: cannot fit
    response = upload(api, big, name="big.dcm", conditions="pneumonia")

    assert response.status_code == 507, response.content
    assert "storage is full" in response.json()["error"]
    assert not Patient.objects.exists() and not Study.objects.exists()
    assert not Image.objects.exists() and not Analysis.objects.exists()
    assert _files(full_media) == []

    small = dicom_bytes(patient_id="MRN-DISKFULL", size=200)
    assert upload(api, small, name="small.dcm", conditions="pneumonia").status_code == 201
    assert Image.objects.count() == 1


def test_a_bulk_upload_that_fills_the_media_disk_says_so_for_each_file(api, db, full_media: Path) -> None:
    """A batch whose files together do not fit: each file is reported refused with the
    storage-full message (507 for the request), and nothing of the batch is kept."""
    files = [
        SimpleUploadedFile("one.dcm", dicom_bytes(patient_id="MRN-BULKFULL", size=700, seed=1)),
        SimpleUploadedFile("two.dcm", dicom_bytes(patient_id="MRN-BULKFULL", size=700, seed=2)),
        SimpleUploadedFile("three.dcm", dicom_bytes(patient_id="MRN-BULKFULL", size=700, seed=3)),
    ]
    response = api.post("/api/uploads/batch/", {"files": files}, format="multipart")

    assert response.status_code == 507, response.content
    body = response.json()
    assert [r["filename"] for r in body["results"]] == ["one.dcm", "two.dcm", "three.dcm"]
    assert all(r["status"] == "rejected" and "storage is full" in r["error"] for r in body["results"])
    assert not Image.objects.exists() and not Patient.objects.exists()
    assert _files(full_media) == []
