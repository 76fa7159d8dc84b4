"""Bulk uploads through the REST API (POST /api/uploads/batch/), against PostgreSQL and a
Redis broker no worker listens to, so the jobs they send can be read back."""

from __future__ import annotations

import base64
import json
from typing import Any

import redis
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.web.fixtures import dicom_bytes, media_files, png_bytes, upload
from web.clinical.models import Analysis, AuditEvent, Image, Patient, Study


def bulk_upload(client: Any, files: list[tuple[str, bytes]], **fields: Any) -> Any:
    return client.post(
        "/api/uploads/batch/",
        {"files": [SimpleUploadedFile(name, data) for name, data in files], **fields},
        format="multipart",
    )


def sent_jobs(url: str, queue: str) -> list[tuple[str, Any]]:
    """(task name, first argument) of every message waiting on a queue, oldest first."""
    messages = redis.Redis.from_url(url).lrange(f"{settings.RADTRIAGE_NAMESPACE}.{queue}", 0, -1)
    jobs = []
    for raw in reversed(messages):  # kombu pushes on the left
        message = json.loads(raw)
        args, _, _ = json.loads(base64.b64decode(message["body"]))
        jobs.append((message["headers"]["task"], args[0]))
    return jobs


def test_a_bulk_upload_keeps_the_good_files_refuses_the_bad_and_sends_batch_jobs(
    api, transactional_db, private_redis, broker_switch, settings
) -> None:
    url = f"redis://127.0.0.1:{private_redis[1]}/0"
    broker_switch(url)
    settings.ANALYSIS_BATCH_SIZE = 2
    good = [dicom_bytes(patient_id=f"MRN-B{i}", seed=i) for i in range(5)]
    files = [
        ("a.dcm", good[0]),
        ("b.dcm", good[1]),
        ("broken.dcm", good[2][:300]),
        ("c.dcm", good[2]),
        ("again.dcm", good[0]),
        ("d.dcm", good[3]),
        ("e.dcm", good[4]),
    ]

    response = bulk_upload(api, files, conditions="pneumonia")

    assert response.status_code == 201, response.content
    body = response.json()
    assert [r["status"] for r in body["results"]] == [
        "created",
        "created",
        "rejected",
        "created",
        "duplicate",
        "created",
        "created",
    ]
    assert (body["created"], body["duplicates"], body["rejected"]) == (5, 1, 1)
    broken = body["results"][2]
    assert broken["filename"] == "broken.dcm" and "DICOM" in broken["error"]
    assert broken["image_id"] is None and broken["analyses"] == []
    assert body["results"][4]["image_id"] == body["results"][0]["image_id"]
    # Five images, each under its own patient; nothing at all from the broken file.
    assert Image.objects.count() == 5 and Patient.objects.count() == 5
    assert len(media_files()) == 10  # five originals and five thumbnails
    created = [a["id"] for r in body["results"] if r["status"] == "created" for a in r["analyses"]]
    assert set(Analysis.objects.values_list("queue", flat=True)) == {"batch"}
    # Jobs of at most two analyses each, on the batch queue, covering every new analysis once.
    jobs = sent_jobs(url, "batch")
    assert [name for name, _ in jobs] == ["worker.tasks.analyze_batch"] * 2 + ["worker.tasks.analyze"]
    assert sorted(i for _, ids in jobs for i in ([ids] if isinstance(ids, int) else ids)) == sorted(created)
    assert sent_jobs(url, "interactive") == []


def test_a_bulk_upload_can_ask_for_the_interactive_queue(
    api, transactional_db, private_redis, broker_switch
) -> None:
    url = f"redis://127.0.0.1:{private_redis[1]}/0"
    broker_switch(url)
    response = bulk_upload(
        api,
        [(f"{i}.dcm", dicom_bytes(patient_id=f"MRN-I{i}", seed=i)) for i in range(2)],
        conditions="pneumonia",
        queue="interactive",
    )
    assert response.status_code == 201, response.content
    # A person is waiting: one job per analysis, so each result arrives as soon as it can.
    assert [name for name, _ in sent_jobs(url, "interactive")] == ["worker.tasks.analyze"] * 2


def test_a_bulk_upload_where_no_file_is_accepted_is_a_400_with_each_reason(api, db) -> None:
    response = bulk_upload(api, [("notes.txt", b"hello"), ("empty.dcm", b"")])
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "None of the 2 files was accepted; see results."
    assert [r["status"] for r in body["results"]] == ["rejected", "rejected"]
    assert all(r["error"] for r in body["results"])
    assert not Image.objects.exists() and media_files() == []


def test_a_bulk_upload_of_files_already_stored_is_a_200(api, db) -> None:
    data = dicom_bytes(patient_id="MRN-SAME")
    assert bulk_upload(api, [("x.dcm", data)]).status_code == 201
    response = bulk_upload(api, [("x-again.dcm", data)])
    assert response.status_code == 200 and response.json()["duplicates"] == 1
    assert Image.objects.count() == 1


def test_too_many_files_in_one_request_are_refused_with_the_limit(api, db, settings) -> None:
    settings.RADTRIAGE_MAX_FILES_PER_REQUEST = 2
    response = bulk_upload(api, [(f"{i}.dcm", dicom_bytes(patient_id=f"MRN-{i}")) for i in range(3)])
    assert response.status_code == 400
    assert "at most 2 per request" in json.dumps(response.json())
    assert not Image.objects.exists()


def test_an_oversized_file_is_refused_alone_with_413(api, db, settings) -> None:
    small = dicom_bytes(patient_id="MRN-S", size=64)
    big = dicom_bytes(patient_id="MRN-L", size=256)
    settings.RADTRIAGE_MAX_UPLOAD_BYTES = len(small) + 100
    response = bulk_upload(api, [("big.dcm", big), ("small.dcm", small)])
    assert response.status_code == 201
    big_result, small_result = response.json()["results"]
    assert big_result["status"] == "rejected" and "largest accepted" in big_result["error"]
    assert small_result["status"] == "created"
    assert list(Patient.objects.values_list("patient_id", flat=True)) == ["MRN-S"]


def test_a_bulk_upload_without_files_says_so(api, db) -> None:
    response = api.post("/api/uploads/batch/", {"conditions": "pneumonia"}, format="multipart")
    assert response.status_code == 400 and "files" in json.dumps(response.json())


def test_images_of_one_study_in_one_bulk_upload_share_its_patient_and_study(api, db) -> None:
    files = [
        (f"view{i}.dcm", dicom_bytes(patient_id="MRN-SAMESTUDY", study_uid="1.2.9.9.1", seed=i))
        for i in range(3)
    ]
    response = bulk_upload(api, files, conditions="pneumonia")

    assert response.status_code == 201 and response.json()["created"] == 3
    study = Study.objects.get()
    assert Patient.objects.count() == 1 and study.images.count() == 3
    assert study.status == Study.Status.ANALYSING
    assert Analysis.objects.filter(image__study=study).count() == 3
    assert AuditEvent.objects.filter(action="image.upload", study=study).count() == 3


def test_a_bulk_file_claiming_another_patients_study_is_a_conflict_alone(api, db) -> None:
    upload(api, dicom_bytes(patient_id="MRN-OWNER", study_uid="1.2.9.9.2", seed=1))
    response = bulk_upload(
        api,
        [
            ("intruder.dcm", dicom_bytes(patient_id="MRN-OTHER", study_uid="1.2.9.9.2", seed=2)),
            ("fine.dcm", dicom_bytes(patient_id="MRN-FINE", seed=3)),
        ],
    )

    assert response.status_code == 201
    intruder, fine = response.json()["results"]
    assert intruder["status"] == "rejected" and "belongs to another patient" in intruder["error"]
    assert fine["status"] == "created"
    assert Study.objects.get(study_instance_uid="1.2.9.9.2").images.count() == 1
    assert Image.objects.count() == 2 and len(media_files()) == 4


def test_an_existing_patient_record_is_only_filled_in_never_overwritten(api, db) -> None:
    Patient.objects.create(patient_id="MRN-KNOWN", name="Known^Name")
    bulk_upload(api, [("a.dcm", dicom_bytes(patient_id="MRN-KNOWN", patient_name="Other^Name"))])

    patient = Patient.objects.get(patient_id="MRN-KNOWN")
    assert patient.name == "Known^Name" and patient.sex == "F"  # kept; the empty sex filled


def test_pngs_in_a_bulk_upload_join_one_study_by_accession_number(api, db) -> None:
    response = bulk_upload(
        api,
        [(f"{i}.png", png_bytes(seed=i)) for i in range(2)],
        patient_id="MRN-PNGS",
        accession_number="ACC-PNGS",
        body_part="knee",
    )

    assert response.status_code == 201 and response.json()["created"] == 2
    study = Study.objects.get(accession_number="ACC-PNGS")
    assert study.patient.patient_id == "MRN-PNGS" and study.images.count() == 2


def test_a_bulk_upload_racing_another_upload_falls_back_to_one_file_at_a_time(api, db, monkeypatch) -> None:
    from django.db import IntegrityError
    from django.db.models.query import QuerySet

    # As if another uploader inserted the same patient between our read and our insert.
    real_bulk_create = QuerySet.bulk_create
    raced = []

    def racing(self, objs, *args, **kwargs):
        if self.model is Patient and not raced:
            raced.append(True)
            Patient.objects.create(patient_id="MRN-RACE-0")
            raise IntegrityError("duplicate key value violates unique constraint")
        return real_bulk_create(self, objs, *args, **kwargs)

    monkeypatch.setattr(QuerySet, "bulk_create", racing)
    response = bulk_upload(
        api,
        [(f"{i}.dcm", dicom_bytes(patient_id=f"MRN-RACE-{i}", seed=i)) for i in range(2)],
        conditions="pneumonia",
    )

    assert response.status_code == 201, response.content
    assert response.json()["created"] == 2
    assert Patient.objects.filter(patient_id__startswith="MRN-RACE-").count() == 2
    assert Image.objects.count() == 2 and len(media_files()) == 4  # no orphan from the 1st try
