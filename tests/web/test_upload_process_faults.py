"""Uploads against a real web process (uvicorn): killed in the middle of a multi-file upload,
and the memory a 600 MB batch costs it."""

from __future__ import annotations

import io
import os
import signal
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from django.db import connection, transaction

from tests.web.fixtures import Service, dicom_bytes, free_port, media_files, service_env, wait_for
from web.clinical.files import UPLOAD_JOURNALS, media_remove_abandoned_uploads
from web.clinical.models import Analysis, Image, Patient, Study

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


class WebProcess:
    """uvicorn as the Procfile runs it, sending its jobs to `broker`: a Redis no worker reads,
    so the analyses it queues stay queued (no worker of another test runs them, or holds
    their rows, while the database is reset after the test)."""

    def __init__(self, log_dir: Path, broker: str) -> None:
        self.port = free_port()
        argv = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(self.port)]
        argv.append("--no-proxy-headers")
        env = service_env(REDIS_URL=broker)
        self.service = Service("uvicorn", [*argv, "web.asgi:application"], env, log_dir)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> WebProcess:
        self.service.start(ready_text="Uvicorn running on", timeout=60)
        return self

    def __exit__(self, *_: Any) -> None:
        self.service.stop()

    @property
    def pid(self) -> int:
        assert self.service.proc is not None
        return self.service.proc.pid


@pytest.fixture()
def parked(private_redis: Any) -> str:
    return f"redis://127.0.0.1:{private_redis[1]}/0"


@pytest.fixture()
def token(radiologist: Any) -> str:
    from rest_framework.authtoken.models import Token

    return Token.objects.create(user=radiologist).key


def _part_head(boundary: str, name: str, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    kind = "Content-Type: application/octet-stream\r\n" if filename else ""
    return f"--{boundary}\r\nContent-Disposition: {disposition}\r\n{kind}\r\n".encode()


def _multipart(files: list[tuple[str, bytes]], fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(_part_head(boundary, name) + value.encode() + b"\r\n")
    for filename, data in files:
        out.write(_part_head(boundary, "files", filename) + data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def _post_batch(url: str, token: str, body: Any, content_type: str) -> requests.Response:
    return requests.post(
        f"{url}/api/uploads/batch/",
        data=body,
        headers={"Authorization": f"Token {token}", "Content-Type": content_type},
        timeout=600,
    )


def _backends_waiting_on_a_lock() -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # else a transaction sees one snapshot
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
        )
        return [pid for (pid,) in cursor.fetchall()]


def _hold_sop_instance_uid(sop_uid: str) -> None:
    """In the caller's open transaction, an uncommitted image row with this SOPInstanceUID:
    another transaction inserting the same UID waits on the unique index until it ends."""
    patient = Patient.objects.create(patient_id="MRN-HOLD")
    study = Study.objects.create(patient=patient, study_instance_uid="1.2.3.4.999")
    Image.objects.create(
        study=study,
        sop_instance_uid=sop_uid,
        file="hold.dcm",
        format="dicom",
        size_bytes=1,
        sha256="0" * 64,
        width=1,
        height=1,
    )


def test_a_web_process_killed_mid_batch_leaves_nothing_and_the_batch_sent_again_says_each_file_made_it(
    radiologist, token, service_logs, settings, parked
) -> None:
    """The web process is SIGKILLed while it stores a 4-file batch (every file written to
    disk, the rows not committed). The uploader's request fails without an answer; no row
    stays, and the files it had written are removed by the abandoned-upload check (a beat task
    every 5 min, for uploads untouched 15 min; called at once here). Sent again, the batch
    answers file by file: all 4 "created", each with one analysis per requested condition."""
    uids = [f"1.2.826.0.1.3680043.99.{i}" for i in range(4)]
    files = [
        (f"film-{i}.dcm", dicom_bytes(patient_id=f"MRN-KILL-{i}", seed=i, sop_uid=uids[i])) for i in range(4)
    ]
    body, content_type = _multipart(files, {"conditions": "pneumonia"})
    before = set(media_files())
    answer: dict[str, Any] = {}

    def send(url: str) -> None:
        try:
            answer["response"] = _post_batch(url, token, body, content_type)
        except requests.RequestException as exc:
            answer["error"] = exc

    with WebProcess(service_logs, parked) as web:
        # The upload writes its 4 files and thumbnails, then inserts its image rows and waits
        # on this uncommitted row's unique SOPInstanceUID. That is when the process dies.
        with transaction.atomic():
            _hold_sop_instance_uid(uids[3])
            sender = threading.Thread(target=send, args=(web.url,))
            sender.start()
            wait_for(lambda: _backends_waiting_on_a_lock() or answer, timeout=120, what="the upload to wait")
            assert not answer, (answer, getattr(answer.get("response"), "text", "")[:2000])
            written = set(media_files()) - before
            os.kill(web.pid, signal.SIGKILL)
            transaction.set_rollback(True)
        sender.join(timeout=30)

    assert "error" in answer, answer  # the uploader got no answer: the request failed
    assert len(written) == 2 * len(files)  # each file and its thumbnail were on disk
    wait_for(lambda: not _backends_waiting_on_a_lock(), timeout=30, what="the dead request to end")
    assert not Image.objects.exists() and not Analysis.objects.exists() and not Patient.objects.exists()
    journals = list((Path(settings.MEDIA_ROOT) / UPLOAD_JOURNALS).glob("*.txt"))
    assert len(journals) == 1

    removed = media_remove_abandoned_uploads(older_than=0)

    assert sorted(removed) == sorted(str(p.relative_to(settings.MEDIA_ROOT)) for p in written)
    assert set(media_files()) == before  # no orphan file left
    assert not any((Path(settings.MEDIA_ROOT) / UPLOAD_JOURNALS).iterdir())  # nor its journal

    with WebProcess(service_logs, parked) as web:
        again = _post_batch(web.url, token, body, content_type)
    assert again.status_code == 201, again.text
    results = again.json()["results"]
    assert [r["filename"] for r in results] == [name for name, _ in files]
    assert [r["status"] for r in results] == ["created"] * len(files)
    assert Image.objects.count() == len(files)
    for image in Image.objects.all():
        assert list(image.analyses.values_list("condition", flat=True)) == ["pneumonia"]


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def test_a_600_mb_batch_streams_to_disk_and_costs_the_web_process_no_more_than_one_file(
    token, service_logs, parked
) -> None:
    """60 DICOM files of 10 MB in one request (572 MiB): all stored, and the web process's
    peak memory (VmHWM) stays within 50 MiB of its peak for a request of one such file: the
    request is spooled to disk, each file is a temporary file, and one image is decoded at a
    time, so memory does not grow with the batch (it used to hold every file, then every
    image's pixels). Decoding one 10 MB image costs ~100 MiB by itself (the windowing works in
    floats), which is the floor whatever the batch."""
    count, side = 60, 2236  # 2236^2 x 16 bit = 10 MB of pixels per file
    with tempfile.NamedTemporaryFile(suffix=".multipart") as spool:
        boundary = uuid.uuid4().hex
        spool.write(_part_head(boundary, "conditions") + b"pneumonia\r\n")
        for i in range(count):
            spool.write(_part_head(boundary, "files", f"big-{i}.dcm"))
            spool.write(dicom_bytes(patient_id=f"MRN-BIG-{i % 6}", size=side, seed=i))
            spool.write(b"\r\n")
        spool.write(f"--{boundary}--\r\n".encode())
        spool.flush()
        size = spool.tell()
        content_type = f"multipart/form-data; boundary={boundary}"
        one_body, one_type = _multipart(
            [("one.dcm", dicom_bytes(patient_id="MRN-ONE", size=side, seed=99))], {}
        )

        with WebProcess(service_logs, parked) as web:
            idle = _rss_kib(web.pid, "VmRSS")
            assert _post_batch(web.url, token, one_body, one_type).status_code == 201
            one_file_peak = _rss_kib(web.pid, "VmHWM")
            Path(f"/proc/{web.pid}/clear_refs").write_text("5")  # reset the peak (VmHWM)
            spool.seek(0)
            response = _post_batch(web.url, token, spool, content_type)
            batch_peak = _rss_kib(web.pid, "VmHWM")

    assert response.status_code == 201, response.text[:2000]
    assert response.json()["created"] == count
    assert size > 600 * 10**6
    over_one_file = (batch_peak - one_file_peak) / 1024
    print(
        f"{size / 2**20:.0f} MiB batch of {count} files: web RSS idle {idle / 1024:.0f} MiB, peak for one "
        f"file {one_file_peak / 1024:.0f} MiB, for the batch {batch_peak / 1024:.0f} MiB "
        f"({over_one_file:+.0f} MiB)"
    )
    assert over_one_file < 50
