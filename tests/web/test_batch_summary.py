"""A running batch's page data, on real rows: the positives per condition counted by the one
finding rule while analyses are still queued, the duplicate files named with what they
matched, and the time left from the rate measured on the batch (a driven clock)."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest

from web.clinical.batches.batches import batch_progress
from web.clinical.batches.summary import MEASURING, RATE_WINDOW, batch_eta, batch_summary
from web.clinical.models import Analysis, Batch, BatchItem, Image, Patient, Study

NOW = dt.datetime(2026, 11, 25, 14, 0, tzinfo=dt.UTC)
_seq = itertools.count(1)

# (condition, how the result stands) of each analysis; "queued" has not run yet.
FINDING = {"state": "succeeded", "positive": True, "applicable": True, "probability": 0.9}
RESULTS: dict[str, dict[str, Any]] = {
    "finding": FINDING,
    "negative": {**FINDING, "positive": False, "probability": 0.1},
    "placeholder": {**FINDING, "is_placeholder": True, "placeholder_reason": "no model"},
    "experimental": {**FINDING, "experimental": True, "experimental_reason": "trial"},
    "not_applicable": {**FINDING, "applicable": False, "not_applicable_reason": "a knee"},
    "failed": {"state": "failed", "error_message": "unreadable"},
    "queued": {"state": "queued"},
}


def stored_image(name: str) -> Image:
    n = next(_seq)
    patient = Patient.objects.create(patient_id=f"MRN-B{n}", name="Doe^Jane")
    study = Study.objects.create(
        patient=patient,
        study_instance_uid=f"1.2.826.0.7.{n}",
        accession_number=f"ACC-B{n}",
        body_part="CHEST",
    )
    return Image.objects.create(
        study=study,
        sop_instance_uid=f"1.2.826.0.6.{n}",
        file=f"images/b{n}.png",
        original_filename=name,
        format="png",
        size_bytes=10,
        sha256=f"{n:064d}",
        width=8,
        height=8,
    )


def analysis(
    image: Image, batch: Batch, condition: str, result: str, *, finished: dt.datetime | None = None
) -> Analysis:
    fields = dict(RESULTS[result])
    if fields["state"] != "queued":
        fields.update(threshold=0.5, finished_at=finished or NOW - dt.timedelta(minutes=1))
    return Analysis.objects.create(
        image=image,
        batch=batch,
        condition=condition,
        model_id=f"{condition}-test",
        model_sha256="cd" * 32,
        **fields,
    )


def running_batch(*, started: dt.datetime, files: int = 0) -> Batch:
    batch = Batch.objects.create(source=Batch.Source.FOLDER, source_name="ward", files_total=files)
    Batch.objects.filter(pk=batch.pk).update(state=Batch.State.RUNNING, started_at=started)
    batch.refresh_from_db()
    return batch


def test_positives_are_counted_per_condition_by_the_finding_rule_while_the_batch_runs(db) -> None:
    batch = running_batch(started=NOW - dt.timedelta(minutes=5), files=7)
    images = [stored_image(f"scans/{i:03}.dcm") for i in range(7)]
    for image, result in zip(
        images, ["finding", "finding", "negative", "placeholder", "queued", "queued", "failed"], strict=False
    ):
        analysis(image, batch, "pneumonia", result)
    for image, result in zip(images, ["finding", "experimental", "not_applicable", "queued"], strict=False):
        analysis(image, batch, "fracture", result)
    analysis(images[0], batch, "cardiomegaly", "queued")  # asked for, nothing yet: 0
    # A finding of another batch on the same image is that batch's.
    analysis(images[1], running_batch(started=NOW), "fracture", "finding")
    # A later reading of images[1] by a real model replaces its pneumonia finding: 1 stands.
    analysis(images[1], batch, "pneumonia", "negative", finished=NOW)

    expected = {"cardiomegaly": 0, "fracture": 1, "pneumonia": 1}
    assert batch.state == Batch.State.RUNNING
    assert batch_summary(batch)["positives"] == expected
    progress = batch_progress(batch, now=NOW)
    assert progress["positives"] == expected
    assert (progress["done"], progress["total"], progress["failed"]) == (9, 13, 1)


def test_duplicate_files_are_named_with_the_image_and_study_they_match(db) -> None:
    batch = running_batch(started=NOW, files=3)
    first = stored_image("scans/000.dcm")
    earlier = stored_image("ward-2025/chest.dcm")  # stored before this batch
    BatchItem.objects.create(
        batch=batch, position=0, filename="scans/000.dcm", status="accepted", image=first
    )
    BatchItem.objects.create(
        batch=batch, position=1, filename="copy-of-first.dcm", status="duplicate", image=first
    )
    BatchItem.objects.create(batch=batch, position=2, filename="again.dcm", status="duplicate", image=earlier)

    assert batch_summary(batch)["duplicate_files"] == [
        {
            "file": "copy-of-first.dcm",
            "image": first.pk,
            "study": first.study_id,
            "accession": first.study.accession_number,
            "stored_as": "scans/000.dcm",
        },
        {
            "file": "again.dcm",
            "image": earlier.pk,
            "study": earlier.study_id,
            "accession": earlier.study.accession_number,
            "stored_as": "ward-2025/chest.dcm",
        },
    ]


def test_the_time_left_follows_the_rate_measured_on_the_batch(db) -> None:
    batch = running_batch(started=NOW - dt.timedelta(minutes=20), files=10)
    images = [stored_image(f"f{i}.dcm") for i in range(10)]
    # Two ended long ago, four in the last ten minutes, four still to run.
    minutes_ago = [15, 12, 8, 6, 4, 1]
    for image, ago in zip(images, minutes_ago, strict=False):
        analysis(image, batch, "pneumonia", "negative", finished=NOW - dt.timedelta(minutes=ago))
    for image in images[6:]:
        analysis(image, batch, "pneumonia", "queued")

    # 4 in the last 10 minutes: 0.4 a minute; 4 left: 10 minutes.
    assert batch_eta(batch, done=6, total=10, now=NOW) == {
        "rate_per_minute": 0.4,
        "eta_seconds": 600.0,
        "eta_text": "about 10 min left",
    }
    progress = batch_progress(batch, now=NOW)
    assert (progress["eta_text"], progress["percent"]) == ("about 10 min left", 60.0)
    # Five minutes on with nothing more ended, the rate falls and the time left grows.
    later = batch_eta(batch, done=6, total=10, now=NOW + dt.timedelta(minutes=5))
    assert later["rate_per_minute"] == 0.2 and later["eta_text"] == "about 20 min left"
    # Nothing ended in the whole window: no rate to go by.
    assert batch_eta(batch, done=6, total=10, now=NOW + RATE_WINDOW + dt.timedelta(minutes=2))[
        "eta_text"
    ] == (MEASURING)


def test_a_young_batch_is_measured_since_its_start_and_says_measuring_before_any_result(db) -> None:
    batch = running_batch(started=NOW - dt.timedelta(minutes=2), files=9)
    images = [stored_image(f"g{i}.dcm") for i in range(9)]
    for image in images:
        analysis(image, batch, "pneumonia", "queued")
    assert batch_eta(batch, done=0, total=9, now=NOW) == {
        "rate_per_minute": None,
        "eta_seconds": None,
        "eta_text": MEASURING,
    }
    assert batch_progress(batch, now=NOW)["eta_text"] == MEASURING

    Analysis.objects.filter(image__in=images[:3]).update(
        state="succeeded", finished_at=NOW - dt.timedelta(seconds=30)
    )
    # 3 in the 2 minutes since the start: 1.5 a minute; 6 left: 4 minutes.
    eta = batch_eta(batch, done=3, total=9, now=NOW)
    assert (eta["rate_per_minute"], eta["eta_seconds"], eta["eta_text"]) == (1.5, 240.0, "about 4 min left")


@pytest.mark.parametrize("state", [Batch.State.WAITING, Batch.State.DONE])
def test_no_time_left_is_shown_before_the_start_or_after_the_end(db, state: str) -> None:
    batch = running_batch(started=NOW - dt.timedelta(minutes=2))
    Batch.objects.filter(pk=batch.pk).update(
        state=state, started_at=None if state == Batch.State.WAITING else batch.started_at
    )
    batch.refresh_from_db()
    assert batch_eta(batch, done=1, total=5, now=NOW)["eta_text"] == ""
