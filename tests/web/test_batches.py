"""Batches: an import of many files as one Batch (archive, browser, server folder), the archive
safety rules, overnight scheduling with a driven clock, and `manage.py import_batch` as a user
runs it. Real PostgreSQL and a Redis broker of our own (the jobs sent can be read back)."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.web.fixtures import REPO, dicom_bytes, media_files, png_bytes, service_env
from tests.web.test_bulk_upload_api import sent_jobs
from web.clinical.models import Analysis, AuditEvent, Batch, BatchItem, Image

SHARED_DATA = REPO.parent / "shared" / "data"


def zip_of(members: list[tuple[str, bytes]], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members:
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return buffer.getvalue()


def hostile_archive(good: int) -> tuple[bytes, list[bytes]]:
    """`good` readable images (DICOM, and four PNGs named in a patients.csv), plus one copy of
    the first, two corrupt files, a zip-slip member, an absolute path, a zip bomb member and a
    nested archive."""
    images = [dicom_bytes(patient_id=f"MRN-Z{i}", seed=200 + i) for i in range(good - 4)]
    pngs = [png_bytes(size=72, seed=300 + i) for i in range(4)]
    members = [(f"scans/{i:03}.dcm", data) for i, data in enumerate(images)]
    members += [(f"photos/p{i}.png", data) for i, data in enumerate(pngs[:2])]
    members += [(f"photos/q{i}.png", data) for i, data in enumerate(pngs[2:])]
    members += [
        (
            "photos/patients.csv",
            b"file,patient_id,name,birth date,sex,accession\np0.png,MRN-CSV0,Roe^Ann,1980-02-03,F,A0\n"
            b"p1.png,MRN-CSV1,Roe^Bob,1981-04-05,M,A1\n",
        ),
        ("copy-of-first.dcm", images[0]),
        ("corrupt.png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 50),
        ("truncated.dcm", images[1][:400]),
        ("../../escaped.dcm", dicom_bytes(patient_id="MRN-ESCAPE", seed=999)),
        ("/etc/absolute.dcm", dicom_bytes(patient_id="MRN-ABS", seed=998)),
        ("bomb.dcm", b"\0" * (3 * 2**20)),
        ("inner.zip", zip_of([("x.dcm", images[2])])),
    ]
    return zip_of(members), images


@pytest.fixture()
def technologist(db: Any, django_user_model: Any) -> Any:
    user = django_user_model.objects.create_user("tech.tina", password="pw-tech")
    user.groups.add(Group.objects.get_or_create(name="technologist")[0])
    return user


@pytest.fixture()
def tech_api(technologist: Any) -> Any:
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_login(technologist)
    return client


@pytest.fixture()
def parked_broker(private_redis, broker_switch) -> str:
    """Jobs go to a Redis of our own that no worker reads, so they can be read back."""
    url = f"redis://127.0.0.1:{private_redis[1]}/0"
    broker_switch(url)
    return url


def post_archive(client: Any, data: bytes, **fields: Any) -> Any:
    return client.post(
        "/api/batches/",
        {"archive": SimpleUploadedFile("import.zip", data, content_type="application/zip"), **fields},
        format="multipart",
    )


def test_an_archive_batch_counts_every_file_and_refuses_the_hostile_ones_alone(
    tech_api, parked_broker, transactional_db, isolated_media
) -> None:
    archive, images = hostile_archive(50)

    response = post_archive(tech_api, archive, conditions="pneumonia")

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["files"], body["accepted"], body["duplicates"]) == (57, 50, 1)
    reasons = {r["file"]: r["reason"] for r in body["refused"]}
    assert set(reasons) == {
        "corrupt.png",
        "truncated.dcm",
        "../../escaped.dcm",
        "/etc/absolute.dcm",
        "bomb.dcm",
        "inner.zip",
    }
    assert "zip-slip" in reasons["../../escaped.dcm"] and "absolute" in reasons["/etc/absolute.dcm"]
    assert "zip bomb" in reasons["bomb.dcm"] and "nested" in reasons["inner.zip"]
    # Patients: the DICOM headers, the patients.csv for p0/p1; q0/q1 have none: unidentified.
    assert body["patients_from"] == {"DICOM header": 47, "patients.csv": 2, "unidentified": 2}
    assert Image.objects.filter(study__patient__patient_id="MRN-CSV0").count() == 1
    assert Image.objects.filter(study__patient__patient_id__startswith="UNIDENTIFIED-").count() == 2
    assert Image.objects.get(study__patient__patient_id="MRN-CSV1").study.accession_number == "A1"
    # Nothing of the escaping members was stored anywhere; inside MEDIA_ROOT only the 50.
    assert not Image.objects.filter(study__patient__patient_id__in=["MRN-ESCAPE", "MRN-ABS"]).exists()
    assert len(media_files()) == 100  # 50 originals and 50 thumbnails
    root = Path(isolated_media)
    assert not list(root.parent.rglob("escaped*")) and not list(root.parents[1].glob("escaped*"))
    assert not Path("/etc/absolute.dcm").exists()
    # The 50 analyses belong to the batch and went to the batch queue, a model per job.
    ids = set(Analysis.objects.filter(batch_id=body["batch"]).values_list("pk", flat=True))
    assert len(ids) == 50 and body["progress"] == {**body["progress"], "total": 50, "done": 0}
    sent = {
        i for _, job in sent_jobs(parked_broker, "batch") for i in (job if isinstance(job, list) else [job])
    }
    assert sent == ids
    assert AuditEvent.objects.filter(action="batch.create").count() == 1
    # The list and the page show it; the worklist can be narrowed to its studies.
    assert tech_api.get("/api/batches/").json()["results"][0]["batch"] == body["batch"]
    assert len(body["studies"]) == 50
    studies = tech_api.get(f"/api/studies/?batch={body['batch']}&limit=200").json()
    assert studies["count"] == 50


def test_an_archive_that_would_expand_beyond_the_limit_is_refused_whole(
    tech_api, parked_broker, transactional_db, settings
) -> None:
    settings.RADTRIAGE_ARCHIVE_MAX_MEMBERS = 3
    too_many = zip_of([(f"{i}.dcm", dicom_bytes(patient_id=f"MRN-M{i}", seed=i)) for i in range(4)])
    response = post_archive(tech_api, too_many)
    assert response.status_code == 400 and "at most 3" in response.json()["error"]
    assert post_archive(tech_api, b"not a zip at all").json()["error"].startswith("This is not a readable")
    assert not Batch.objects.exists() and not Image.objects.exists()


def test_only_those_who_may_upload_create_batches_and_outsiders_see_none(
    tech_api, parked_broker, transactional_db, django_user_model
) -> None:
    from rest_framework.test import APIClient

    archive = zip_of([("a.dcm", dicom_bytes(patient_id="MRN-P1", seed=1))])
    api = APIClient()  # logged in, but holding no role: an outsider
    api.force_login(django_user_model.objects.create_user("outsider.olga", password="pw-olga-1"))
    assert post_archive(api, archive).status_code == 403
    assert api.get("/api/batches/").status_code == 403
    created = post_archive(tech_api, archive)
    assert created.status_code == 201
    assert api.get(f"/api/batches/{created.json()['batch']}/").status_code == 403
    page = tech_api.get(f"/batches/{created.json()['batch']}/")
    assert page.status_code == 200 and b"1 accepted" in page.content


def test_an_overnight_batch_waits_for_the_night_window_and_starts_inside_it(
    tech_api, parked_broker, transactional_db, settings
) -> None:
    from web.clinical.analysis.recovery import analyses_requeue_stuck
    from web.clinical.batches.batches import batch_refresh, batches_start_due

    settings.TIME_ZONE = "Europe/Paris"
    settings.RADTRIAGE_NIGHT_WINDOW = "01:00-06:00"
    paris = ZoneInfo("Europe/Paris")
    archive = zip_of([(f"{i}.dcm", dicom_bytes(patient_id=f"MRN-N{i}", seed=40 + i)) for i in range(3)])

    body = post_archive(tech_api, archive, conditions="pneumonia", overnight="true").json()
    batch = Batch.objects.get(pk=body["batch"])
    assert (batch.state, batch.schedule, body["accepted"]) == ("waiting", "overnight", 3)
    assert sent_jobs(parked_broker, "batch") == []

    # The afternoon: nothing starts, and the sweeper leaves the waiting jobs alone.
    assert batches_start_due(now=dt.datetime(2026, 12, 1, 14, 0, tzinfo=paris)) == []
    assert analyses_requeue_stuck(queued_after=0, running_after=3600) == []
    assert batches_start_due(now=dt.datetime(2026, 12, 2, 0, 59, tzinfo=paris)) == []
    assert sent_jobs(parked_broker, "batch") == []
    batch.refresh_from_db()
    assert batch.state == "waiting" and batch.started_at is None

    # 01:30 in Paris (00:30 UTC): it starts, its jobs go on the batch queue.
    inside = dt.datetime(2026, 12, 2, 1, 30, tzinfo=paris)
    assert batches_start_due(now=inside) == [batch.pk]
    ids = sorted(Analysis.objects.filter(batch=batch).values_list("pk", flat=True))
    assert sent_jobs(parked_broker, "batch") == [("worker.tasks.analyze_batch", ids)]
    batch.refresh_from_db()
    assert batch.state == "running" and batch.started_at == inside
    assert batches_start_due(now=inside + dt.timedelta(minutes=1)) == []  # started once

    # Still running at 06:05: it goes on, and says so.
    batches_start_due(now=dt.datetime(2026, 12, 2, 6, 5, tzinfo=paris))
    batch.refresh_from_db()
    assert batch.state == "running" and batch.overran_window
    assert "Did not finish within the night window (01:00-06:00" in batch.note
    Analysis.objects.filter(batch=batch).update(state="failed", error_message="test")
    assert batch_refresh(batch_id=batch.pk)["state"] == "done"
    batch.refresh_from_db()
    assert batch.overran_window and batch.finished_at is not None
    assert "Did not finish within the night window" in tech_api.get(f"/batches/{batch.pk}/").content.decode()


def test_a_batch_reaches_the_workers_in_full_jobs_from_its_first_files(
    parked_broker, transactional_db, settings, tmp_path
) -> None:
    """Each job is one model call: a chunk of files used to end in a short job (50 files, jobs
    of 16: a job of 2 every chunk). The jobs now carry ANALYSIS_BATCH_SIZE analyses each, the
    first as soon as that many files are in, and every analysis goes exactly once."""
    from web.clinical.batches.batches import batch_import
    from web.clinical.ingest.archive_safety import FolderFiles

    settings.ANALYSIS_BATCH_SIZE = 4
    for i in range(10):
        (tmp_path / f"{i:02}.dcm").write_bytes(dicom_bytes(patient_id=f"MRN-J{i}", seed=60 + i))
    with FolderFiles(tmp_path) as files:
        batch = batch_import(files=files, source=Batch.Source.FOLDER, conditions=["pneumonia"], chunk=3)

    ids = sorted(Analysis.objects.filter(batch=batch).values_list("pk", flat=True))
    assert len(ids) == 10
    assert sent_jobs(parked_broker, "batch") == [
        ("worker.tasks.analyze_batch", ids[0:4]),
        ("worker.tasks.analyze_batch", ids[4:8]),
        ("worker.tasks.analyze_batch", ids[8:10]),  # what is left, when the import ends
    ]


def test_waiting_for_a_batch_ends_as_soon_as_its_last_analysis_ends(
    parked_broker, transactional_db, tmp_path, monkeypatch
) -> None:
    """`import_batch --wait` is woken by the batch's own progress event, not by its next poll
    of the database: with the poll set to ten minutes, it still returns once the last analysis
    has ended."""
    import threading
    import time

    from django.db import connection

    from web.clinical.batches import batches

    monkeypatch.setattr(batches, "BATCH_WAIT_POLL_SECONDS", 600.0)

    from web.clinical.analysis.jobs import analysis_fail
    from web.clinical.batches.batches import batch_import, batch_wait, batches_note_progress
    from web.clinical.ingest.archive_safety import FolderFiles

    (tmp_path / "one.dcm").write_bytes(dicom_bytes(patient_id="MRN-W1", seed=71))
    with FolderFiles(tmp_path) as files:
        batch = batch_import(files=files, source=Batch.Source.FOLDER, conditions=["pneumonia"])
    [analysis] = Analysis.objects.filter(batch=batch)
    returned: list[float] = []

    def wait() -> None:
        try:
            assert batch_wait(batch=Batch.objects.get(pk=batch.pk), timeout=30)
            returned.append(time.monotonic())
        finally:
            connection.close()

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.7)  # well into its waiting, past a first poll
    ended = time.monotonic()
    analysis_fail(analysis_id=analysis.pk, message="A corrupt file.")  # as a worker ends it
    batches_note_progress(analysis_ids=[analysis.pk])
    waiter.join(timeout=60)
    assert returned, "batch_wait was not woken by the batch's event"
    assert returned[0] > ended
    batch.refresh_from_db()
    assert batch.state == Batch.State.DONE


def test_a_night_window_across_midnight(settings) -> None:
    from web.clinical.batches.batches import in_night_window

    settings.TIME_ZONE = "UTC"
    settings.RADTRIAGE_NIGHT_WINDOW = "22:00-05:00"
    at = [dt.datetime(2026, 12, 1, h, 0, tzinfo=dt.UTC) for h in (21, 22, 23, 0, 4, 5, 12)]
    assert [in_night_window(t) for t in at] == [False, True, True, True, True, False, False]


@pytest.mark.skipif(not (SHARED_DATA / "manifest.csv").exists(), reason="../shared/data is absent")
def test_import_batch_inline_json_on_real_images(transactional_db, tiny_registry, tmp_path, settings) -> None:
    folder = tmp_path / "incoming"
    folder.mkdir()
    rows = [
        line.split(",")
        for line in (SHARED_DATA / "manifest.csv").read_text().splitlines()[1:]
        if line.startswith("pneumonia/test/")
    ]
    chosen = [r for r in rows if r[3] == "1"][:2] + [r for r in rows if r[3] == "0"][:2]
    for row in chosen:
        shutil.copy(SHARED_DATA / row[0], folder / Path(row[0]).name)
    first = Path(chosen[0][0]).name
    (folder / "patients.csv").write_text(
        f"file,patient_id,name,birth date,sex,accession\n{first},MRN-REAL1,Lee^Kim,2019-05-06,F,ACC-R1\n"
    )
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "nested.zip").write_bytes(zip_of([("x.txt", b"x")]))

    env = service_env(RADTRIAGE_REGISTRY=str(tiny_registry), MEDIA_ROOT=str(settings.MEDIA_ROOT))
    out = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "import_batch",
            str(folder),
            "--inline",
            "--json",
            "--conditions",
            "pneumonia",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    assert (summary["files"], summary["accepted"], summary["duplicates"]) == (6, 4, 0)
    assert {r["file"] for r in summary["refused"]} == {"broken.jpg", "nested.zip"}
    assert summary["patients_from"] == {"patients.csv": 1, "unidentified": 3}
    assert (summary["analyses_done"], summary["analyses_failed"]) == (4, 0)
    assert set(summary["positives"]) == {"pneumonia"} and 0 <= summary["positives"]["pneumonia"] <= 4
    assert len(summary["studies"]) == 4
    batch = Batch.objects.get(pk=summary["batch"])
    assert batch.state == "done" and batch.source == "folder"
    assert BatchItem.objects.get(batch=batch, filename=first).image.study.patient.patient_id == "MRN-REAL1"
    # The others came without patient fields: filed as unidentified, never under their file names.
    others = Image.objects.exclude(study__patient__patient_id="MRN-REAL1")
    assert others.count() == 3
    assert all(
        p.startswith("UNIDENTIFIED-") for p in others.values_list("study__patient__patient_id", flat=True)
    )
    assert all(
        a.model_id == "pneumonia-tiny-test" and a.heatmap_raw for a in Analysis.objects.filter(batch=batch)
    )
    # Sent again: every image is recognised as a duplicate, nothing new is run.
    again = subprocess.run(
        [sys.executable, "manage.py", "import_batch", str(folder), "--json", "--conditions", "pneumonia"],
        cwd=REPO,
        env={**env, "CELERY_BROKER_URL": "redis://127.0.0.1:1/0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["duplicates"] == 4 and json.loads(again.stdout)["analyses"] == 0
    assert os.path.isdir(settings.MEDIA_ROOT)


def test_an_inline_import_sends_no_job_and_one_that_dies_is_taken_over_by_the_workers(
    parked_broker, transactional_db, tmp_path
) -> None:
    """`import_batch --inline` runs its analyses itself: sent to the workers as well, a running
    worker raced it for them (seen as a failed analysis in the full suite). If the inline process
    dies, the beat hands its queued analyses to the workers: no job is lost."""
    from web.clinical.batches.batches import INLINE_ABANDONED_AFTER, batch_import, batches_start_due
    from web.clinical.ingest.archive_safety import FolderFiles

    for i in range(3):
        (tmp_path / f"{i}.dcm").write_bytes(dicom_bytes(patient_id=f"MRN-I{i}", seed=60 + i))
    with FolderFiles(tmp_path) as files:
        batch = batch_import(files=files, source=Batch.Source.FOLDER, conditions=["pneumonia"], inline=True)
    assert (batch.state, batch.accepted) == ("waiting", 3)
    assert sent_jobs(parked_broker, "batch") == []  # the inline run (here: killed) owns them

    # Still young: the beat leaves it to its inline process.
    assert batches_start_due(now=batch.created_at + INLINE_ABANDONED_AFTER / 2) == []
    assert sent_jobs(parked_broker, "batch") == []
    # No progress for longer than that: the workers get every queued analysis, once.
    later = batch.created_at + INLINE_ABANDONED_AFTER * 2
    assert batches_start_due(now=later) == [batch.pk]
    ids = sorted(Analysis.objects.filter(batch=batch).values_list("pk", flat=True))
    assert sent_jobs(parked_broker, "batch") == [("worker.tasks.analyze_batch", ids)]
    batch.refresh_from_db()
    assert batch.state == "running" and "workers finished it" in batch.note
    assert batches_start_due(now=later) == []
