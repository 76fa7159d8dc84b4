"""One corpus of hostile inputs (tests/hostile_corpus.py) through every entry point: the upload
API, the bulk upload behind the upload page, `manage.py import_batch` (folder and zip) and
`manage.py analyze`. Each input gets a clear message, leaves nothing half-stored (rows and
files counted before and after), names no server path, and the next good request succeeds.
Real PostgreSQL; the jobs an accepted file sends go to a Redis no worker reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.hostile_corpus import (
    LONG_NAME,
    NON_UTF8_NAME,
    Case,
    dicom,
    hostile_archive,
    hostile_files,
    hostile_members,
)
from tests.web.fixtures import REPO, dicom_bytes, media_files, service_env, stored_state
from web.clinical.models import BatchItem, Image

LIMIT = 2 * 2**20  # the configured upload size limit in these tests (above the zip bomb)
CASES = hostile_files(max_upload_bytes=LIMIT)
# A name that is not UTF-8 has tests of its own over HTTP (refused by the upload APIs).
HTTP_CASES = [c for c in CASES if c.name != NON_UTF8_NAME]
# What a message must never show: where the server keeps things, or an object's repr.
SERVER_TEXT = ("/tmp", "/work", "/home", "site-packages", "Traceback", "<_io.", "object at 0x")


@pytest.fixture(autouse=True)
def upload_limit(settings) -> None:
    settings.RADTRIAGE_MAX_UPLOAD_BYTES = LIMIT


def assert_every_image_has_its_files_and_no_file_is_orphan() -> None:
    names = set()
    for image in Image.objects.all():
        for field in (image.file, image.thumbnail):
            assert field.name and Path(field.path).is_file(), f"image {image.pk} lost {field.name}"
            names.add(Path(field.path).resolve())
    assert {p.resolve() for p in media_files()} == names


def assert_clean_message(message: str, fragment: str) -> None:
    assert fragment.lower() in message.lower(), message
    assert not any(text in message for text in SERVER_TEXT), message
    assert len(message) < 600, f"an unreadable message of {len(message)} characters"


def multipart(field: str, cases: list[Case], **fields: str) -> tuple[bytes, str]:
    """A multipart body as an HTTP client sends it, file names as raw bytes (so a name that is
    not UTF-8 arrives as such)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    for case in cases:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="'.encode()
            + case.raw_name
            + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
            + case.data
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def post(client: Any, url: str, field: str, cases: list[Case], **fields: str) -> Any:
    body, content_type = multipart(field, cases, **fields)
    return client.generic("POST", url, body, content_type=content_type)


def good_upload_succeeds(client: Any, seed: int) -> None:
    response = client.post(
        "/api/uploads/",
        {"file": _file("next.dcm", dicom_bytes(patient_id=f"MRN-NEXT-{seed}", seed=5000 + seed))},
        format="multipart",
    )
    assert response.status_code == 201, response.content


def _file(name: str, data: bytes) -> Any:
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data)


# --------------------------------------------------------------------------- POST /api/uploads/


@pytest.mark.parametrize("case", HTTP_CASES, ids=[c.id for c in HTTP_CASES])
def test_the_upload_api_answers_each_hostile_file_in_json_and_stores_all_or_nothing(
    api, db, case: Case
) -> None:
    before = stored_state()

    response = post(api, "/api/uploads/", "file", [case], patient_id=f"MRN-{case.id}"[:64])

    assert response.status_code < 500 and response["Content-Type"] == "application/json", response.content
    body = response.json()
    if case.accepted:
        assert response.status_code == 201, body
        assert Image.objects.count() == before["images"] + 1
        assert len(media_files()) == len(before["files"]) + 2  # the file and its thumbnail
        image = Image.objects.get(pk=body["image"]["id"])
        assert len(image.original_filename) <= 255 and image.original_filename[:4] == case.name[:4]
        if case.message:
            assert any(case.message in note.lower() for note in image.decode_notes), image.decode_notes
    else:
        assert 400 <= response.status_code < 500, body
        assert_clean_message(body["error"], case.message)
        assert stored_state() == before
    assert_every_image_has_its_files_and_no_file_is_orphan()
    good_upload_succeeds(api, seed=CASES.index(case))


def test_a_file_name_that_is_not_utf8_is_refused_over_http_and_stores_nothing(api, db) -> None:
    case = next(c for c in CASES if c.name == NON_UTF8_NAME)
    before = stored_state()

    response = post(api, "/api/uploads/", "file", [case], patient_id="MRN-LATIN1")

    assert response.status_code == 400
    assert_clean_message(response.json()["error"], "file name is not valid UTF-8")
    assert stored_state() == before
    good_upload_succeeds(api, seed=777)


def test_a_bulk_file_whose_name_is_not_utf8_gets_a_result_of_its_own(api, db) -> None:
    """Django's multipart parser drops a part whose header is not UTF-8; the API's parser
    (web/api/parsers.py) keeps it, so the upload page can list it as refused."""
    case = next(c for c in CASES if c.name == NON_UTF8_NAME)
    # Larger than the parser's reads (64 KiB): parts cross them, and must arrive unchanged.
    good = Case("big", "big.dcm", dicom(rows=400, cols=400, seed=30), "accept")
    before = stored_state()

    response = post(api, "/api/uploads/batch/", "files", [good, case, good], patient_id="MRN-LATIN1")

    assert response.status_code == 201, response.content
    first, latin1, again = response.json()["results"]
    assert first["status"] == "created" and again["status"] == "duplicate"
    with Image.objects.get(pk=first["image_id"]).file.open("rb") as stored:
        assert stored.read() == good.data
    assert latin1["status"] == "rejected" and latin1["filename"] == _sent_name(case)
    assert_clean_message(latin1["error"], "file name is not valid UTF-8")
    assert latin1["image_id"] is None
    assert Image.objects.count() == before["images"] + 1
    assert len(media_files()) == len(before["files"]) + 2
    assert_every_image_has_its_files_and_no_file_is_orphan()


def test_a_browser_batch_keeps_a_file_whose_name_is_not_utf8(api, db) -> None:
    """POST /api/batches/ files it under its name with U+FFFD for the odd bytes, as
    `import_batch` does for a zip member."""
    case = next(c for c in CASES if c.name == NON_UTF8_NAME)

    response = post(api, "/api/batches/", "files", [case], patient_id="MRN-LATIN1-BATCH")

    assert response.status_code == 201, response.content
    assert response.json()["accepted"] == 1 and response.json()["refused"] == []
    assert Image.objects.get().original_filename == _sent_name(case)


def test_a_form_study_uid_that_is_a_path_is_refused_and_stores_nothing(api, db) -> None:
    png = next(c for c in CASES if c.id == "png-rgba")
    before = stored_state()

    response = post(api, "/api/uploads/", "file", [png], patient_id="MRN-UID", study_instance_uid="../../x")

    assert response.status_code == 400
    assert_clean_message(response.json()["error"], "not a valid DICOM UID")
    assert stored_state() == before


# --------------------------------------------------------------------------- the upload page's bulk API


def test_the_bulk_upload_behind_the_upload_page_refuses_each_hostile_file_on_its_own(api, db) -> None:
    """The upload page sends every file it is given to /api/uploads/batch/ and lists each
    refused file with the `error` of its result (web/ui/static/ui/upload.js)."""
    before = stored_state()

    response = post(api, "/api/uploads/batch/", "files", HTTP_CASES, patient_id="MRN-BULK")

    assert response.status_code == 201, response.content
    results = response.json()["results"]
    # Names as sent; Django cuts one over 255 characters to 255, keeping its extension.
    assert [r["filename"] for r in results] == [
        c.name if len(c.name) <= 255 else c.name[:251] + ".png" for c in HTTP_CASES
    ]
    for case, result in zip(HTTP_CASES, results, strict=True):
        if case.accepted:
            assert result["status"] in ("created", "duplicate"), (case.id, result)
        else:
            assert result["status"] == "rejected", (case.id, result)
            assert_clean_message(result["error"], case.message)
            assert result["outcome"] == f"Refused: {result['error']}" and result["image_id"] is None
    stored = [r for r in results if r["status"] == "created"]
    assert Image.objects.count() == before["images"] + len(stored)
    assert len(media_files()) == len(before["files"]) + 2 * len(stored)
    assert_every_image_has_its_files_and_no_file_is_orphan()
    good_upload_succeeds(api, seed=999)


def _sent_name(case: Case) -> str:
    """The name the server reports back: what it received (a name that is not UTF-8 is read
    with U+FFFD in place of its odd bytes)."""
    return case.raw_name.decode("utf-8", "replace")


def test_a_browser_batch_of_hostile_files_refuses_each_on_its_own(api, db) -> None:
    """POST /api/batches/ with `files` (the batch page's upload)."""
    before = stored_state()

    response = post(api, "/api/batches/", "files", HTTP_CASES, patient_id="MRN-BATCH")

    assert response.status_code == 201, response.content
    body = response.json()
    reasons = {r["file"]: r["reason"] for r in body["refused"]}
    for case in HTTP_CASES:
        name = case.name if len(case.name) <= 255 else case.name[:251] + ".png"
        if case.accepted:
            assert name not in reasons, (case.id, reasons.get(name))
        else:
            assert_clean_message(reasons[name], case.message)
    accepted = [c for c in HTTP_CASES if c.accepted]
    assert body["accepted"] == len(accepted) == Image.objects.count() - before["images"]
    assert_every_image_has_its_files_and_no_file_is_orphan()
    good_upload_succeeds(api, seed=888)


# --------------------------------------------------------------------------- manage.py import_batch


def on_disk(case: Case) -> bytes:
    """The case's name as a relative path: 300 characters is more than Linux allows for one
    name, so that one becomes a folder and a file."""
    if case.name == LONG_NAME:
        return f"{LONG_NAME[:150]}/{LONG_NAME[150:]}".encode()
    return case.raw_name


def _expected_in_a_batch(case: Case) -> tuple[str, str]:
    """A batch refuses an archive inside it as such (not as an unreadable image)."""
    if case.id == "zip-as-file":
        return "refuse", "archive"
    return case.expect, case.message


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO, env=env, capture_output=True, timeout=300
    )


def test_import_batch_of_a_hostile_zip_refuses_each_bad_member_alone(
    transactional_db, tmp_path, settings
) -> None:
    members = CASES + hostile_members()
    archive = tmp_path / "hostile.zip"
    archive.write_bytes(hostile_archive(members))
    env = service_env(RADTRIAGE_MAX_UPLOAD_BYTES=str(LIMIT), CELERY_BROKER_URL="redis://127.0.0.1:1/0")

    out = _run("import_batch", str(archive), "--json", "--overnight", env=env)

    assert out.returncode == 0, out.stderr.decode()[-3000:]
    summary = json.loads(out.stdout)
    reasons = {r["file"]: r["reason"] for r in summary["refused"]}
    for case in members:
        expect, message = _expected_in_a_batch(case)
        name = _sent_name(case)
        if expect == "accept":
            assert name not in reasons, (case.id, reasons.get(name))
        else:
            assert_clean_message(reasons[name], message)
    accepted = [c for c in members if _expected_in_a_batch(c)[0] == "accept"]
    assert summary["accepted"] == len(accepted) == Image.objects.count()
    assert BatchItem.objects.count() == len(members)
    assert_every_image_has_its_files_and_no_file_is_orphan()
    assert not list(Path(settings.MEDIA_ROOT).parent.rglob("escaped*"))
    assert not Path("/tmp/absolute.dcm").exists()


def test_import_batch_of_a_hostile_folder_refuses_each_bad_file_alone(
    transactional_db, tmp_path, settings
) -> None:
    folder = tmp_path / "incoming"
    folder.mkdir()
    names: dict[str, Case] = {}  # the name the summary gives -> its case
    for case in CASES:
        relative = on_disk(case)
        path = Path(os.fsdecode(os.path.join(os.fsencode(folder), relative)))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(case.data)
        names[relative.decode("utf-8", "replace")] = case
    env = service_env(RADTRIAGE_MAX_UPLOAD_BYTES=str(LIMIT), CELERY_BROKER_URL="redis://127.0.0.1:1/0")

    out = _run("import_batch", str(folder), "--json", "--overnight", env=env)

    assert out.returncode == 0, out.stderr.decode()[-3000:]
    summary = json.loads(out.stdout)
    reasons = {r["file"]: r["reason"] for r in summary["refused"]}
    for name, case in names.items():
        expect, message = _expected_in_a_batch(case)
        if expect == "accept":
            assert name not in reasons, (case.id, reasons.get(name))
        else:
            assert_clean_message(reasons[name], message)
    assert summary["files"] == len(CASES)
    assert_every_image_has_its_files_and_no_file_is_orphan()


# --------------------------------------------------------------------------- manage.py analyze


def test_analyze_gives_every_hostile_file_its_error_line_and_analyses_the_readable_ones(
    tiny_registry, tmp_path
) -> None:
    paths = []
    for index, case in enumerate(CASES):
        path = os.path.join(os.fsencode(tmp_path), f"{index:02}-".encode() + on_disk(case))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Path(os.fsdecode(path)).write_bytes(case.data)
        paths.append(path)
    env = {
        **os.environ,
        "RADTRIAGE_REGISTRY": str(tiny_registry),
        "RADTRIAGE_MAX_UPLOAD_BYTES": str(LIMIT),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }

    out = subprocess.run(
        [sys.executable, "manage.py", "analyze", "--condition", "pneumonia", "--jsonl", "--ignore-body-part"]
        + [os.fsdecode(p) for p in paths],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=300,
    )

    assert out.returncode == 0, out.stderr.decode(errors="replace")[-3000:]
    assert b"Traceback" not in out.stderr
    lines = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert len(lines) == len(CASES)
    for case, line in zip(CASES, lines, strict=True):
        # Nothing is filed: a UID or patient ID that could not be stored does not matter here.
        if case.accepted or case.id in ("dicom-huge-uid", "dicom-path-uid", "dicom-huge-patient-id"):
            assert "error" not in line and 0.0 <= line["probability"] <= 1.0, (case.id, line)
        else:
            assert line["positive"] is False, (case.id, line)
            assert case.message.lower() in line["error"].lower(), (case.id, line)
