"""A batch's summary: what it did, as import_batch --json prints it, the batch page shows it
and /api/batches/<id>/ returns it."""

from __future__ import annotations

from typing import Any

from django.db.models import Count

from web.clinical.analysis.findings import findings
from web.clinical.models import Analysis, Batch, BatchItem


def batch_summary(batch: Batch) -> dict[str, Any]:
    """What the batch did, as import_batch --json prints it and the batch page shows it."""
    analyses = Analysis.objects.filter(batch=batch)
    positives = dict(
        findings()  # the batch's findings that stand, by the one rule
        .filter(batch=batch)
        .values_list("condition")
        .annotate(n=Count("pk"))
        .order_by("condition")
    )
    conditions = sorted(set(analyses.values_list("condition", flat=True)))
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
        "positives": {c: positives.get(c, 0) for c in conditions},
        "studies": sorted(set(items.filter(image__isnull=False).values_list("image__study_id", flat=True))),
        "overran_window": batch.overran_window,
        "note": batch.note,
    }
