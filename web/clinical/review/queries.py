"""queries: read-only queries."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, F, QuerySet

from web.clinical.analysis.findings import result_kind_expression


def verdict_counts() -> list[dict[str, Any]]:
    """Current verdicts counted per model (id and checksum), condition, what the AI said (the
    finding rule's kind: a verdict on a flag and one on a negative mean different things) and
    verdict."""
    from web.clinical.models import Annotation

    return list(
        Annotation.objects.exclude(verdict="")
        .values(
            model_id=F("analysis__model_id"),
            model_sha256=F("analysis__model_sha256"),
            condition=F("analysis__condition"),
            ai_result=result_kind_expression("analysis__"),
            verdict_value=F("verdict"),
        )
        .annotate(count=Count("pk"))
        .order_by("model_id", "condition", "ai_result", "verdict_value")
    )


def image_annotations(*, image_id: int) -> QuerySet[Any]:
    """The drawings and notes on an image, oldest first (verdicts are shown on their results)."""
    from web.clinical.models import Annotation

    # The image too: each annotation's measurements read its header (review.measure).
    return Annotation.objects.filter(image_id=image_id, verdict="").select_related("author", "image")
