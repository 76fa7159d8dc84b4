"""queries: read-only queries."""

from __future__ import annotations

from web.clinical.models import Analysis


def analysis_get(*, analysis_id: int) -> Analysis:
    return Analysis.objects.select_related("image__study__patient").get(pk=analysis_id)
