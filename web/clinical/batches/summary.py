"""A batch's summary: what it did, as import_batch --json prints it, the batch page shows it
and /api/batches/<id>/ returns it; and what its progress events carry while it runs: the
positives per condition so far (by the one finding rule) and the time left, from the rate
measured on this batch."""

from __future__ import annotations

import datetime as dt
from typing import Any, TypedDict

from django.db.models import Count
from django.utils import timezone

from web.clinical.analysis.findings import findings
from web.clinical.models import Analysis, Batch, BatchItem

ENDED = (Analysis.State.SUCCEEDED, Analysis.State.FAILED)
# The rate is that of the batch's analyses that ended in this last stretch (since the batch
# started, when that is sooner), so the time left follows the workers as they speed up, slow
# down or stop, rather than an average over the whole night.
RATE_WINDOW = dt.timedelta(minutes=10)
MEASURING = "measuring…"


class BatchEta(TypedDict):
    rate_per_minute: float | None  # analyses ended per minute, measured; None: no rate yet
    eta_seconds: float | None
    eta_text: str  # "about N min left", "measuring…", or "" (not started, or ended)


def batch_positives(batch: Batch) -> dict[str, int]:
    """Condition -> the batch's findings that stand so far, by the one finding rule
    (analysis.findings); every condition the batch asked for is listed, 0 included. Counted
    while the batch runs, each result as it arrives."""
    found = dict(
        findings().filter(batch=batch).values_list("condition").annotate(n=Count("pk")).order_by("condition")
    )
    asked = Analysis.objects.filter(batch=batch).order_by("condition").values_list("condition", flat=True)
    return {condition: found.get(condition, 0) for condition in asked.distinct()}


def batch_duplicates(batch: Batch) -> list[dict[str, Any]]:
    """The batch's files that were already stored: each file's name and the image it matched
    (its study, its accession and the name it was stored under, which may be a file earlier in
    this same batch)."""
    rows = (
        batch.items.filter(status=BatchItem.Status.DUPLICATE)
        .order_by("position")
        .values_list(
            "filename",
            "image_id",
            "image__study_id",
            "image__study__accession_number",
            "image__original_filename",
        )
    )
    return [
        {"file": file, "image": image, "study": study, "accession": accession, "stored_as": stored_as}
        for file, image, study, accession, stored_as in rows
    ]


def batch_eta(batch: Batch, *, done: int, total: int, now: dt.datetime | None = None) -> BatchEta:
    """The time left for the batch's `total - done` analyses still to end, at the rate its
    analyses ended over the last RATE_WINDOW (or since it started). No rate until one has
    ended since the start: "measuring…". Nothing for a batch not started (waiting for its
    night window) or whose analyses have all ended."""
    now = now or timezone.now()
    if batch.started_at is None or batch.state == Batch.State.DONE or done >= total:
        return {"rate_per_minute": None, "eta_seconds": None, "eta_text": ""}
    since = max(batch.started_at, now - RATE_WINDOW)
    seconds = (now - since).total_seconds()
    ended = Analysis.objects.filter(
        batch=batch, state__in=ENDED, finished_at__gte=since, finished_at__lte=now
    ).count()
    if ended == 0 or seconds <= 0:
        return {"rate_per_minute": None, "eta_seconds": None, "eta_text": MEASURING}
    per_second = ended / seconds
    eta = (total - done) / per_second
    return {
        "rate_per_minute": round(per_second * 60, 2),
        "eta_seconds": round(eta, 1),
        "eta_text": f"about {max(1, round(eta / 60))} min left",
    }


def batch_summary(batch: Batch) -> dict[str, Any]:
    """What the batch did, as import_batch --json prints it and the batch page shows it."""
    analyses = Analysis.objects.filter(batch=batch)
    items = batch.items.all()
    return {
        "batch": batch.pk,
        "state": batch.state,
        "schedule": batch.schedule,
        "source": batch.source,
        "source_name": batch.source_name,
        "files": batch.files_total,
        "accepted": batch.accepted,
        "duplicates": batch.duplicates,
        "duplicate_files": batch_duplicates(batch),
        "refused": [
            {"file": i.filename, "reason": i.reason} for i in items.filter(status=BatchItem.Status.REFUSED)
        ],
        "patients_from": batch.patients_from,
        "analyses": analyses.count(),
        "analyses_done": analyses.filter(state=Analysis.State.SUCCEEDED).count(),
        "analyses_failed": analyses.filter(state=Analysis.State.FAILED).count(),
        "failures": [
            {"analysis": pk, "file": name, "condition": condition, "reason": message}
            for pk, name, condition, message in analyses.filter(state=Analysis.State.FAILED)
            .order_by("pk")
            .values_list("pk", "image__original_filename", "condition", "error_message")
        ],
        "positives": batch_positives(batch),
        "studies": sorted(set(items.filter(image__isnull=False).values_list("image__study_id", flat=True))),
        "overran_window": batch.overran_window,
        "note": batch.note,
    }
