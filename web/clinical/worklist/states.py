"""Study state kept by the services: the AI flag and the status while the AI works."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from django.db.models import Exists, OuterRef
from django.utils import timezone

from web.clinical.analysis.findings import studies_with_finding
from web.clinical.models import Analysis, Image, Study

log = logging.getLogger(__name__)


def studies_mark_analysing(studies: list[Study]) -> None:
    waiting = {s.pk: s for s in studies if s.status in (Study.Status.RECEIVED, Study.Status.AI_COMPLETE)}
    if waiting:
        now = timezone.now()
        Study.objects.filter(pk__in=list(waiting)).update(status=Study.Status.ANALYSING, updated_at=now)
        for study in studies:
            if study.pk in waiting:
                study.status, study.updated_at = Study.Status.ANALYSING, now


def study_refresh_status(study: Study) -> None:
    studies_refresh(studies=[study])


def studies_refresh(*, studies: list[Study]) -> None:
    """After analyses end: each study's AI flag (any real finding: succeeded, positive, in the
    model's population, neither a placeholder's nor an experimental model's), and its status
    while the AI still works on it (ANALYSING while any analysis is queued or running, then
    AI_COMPLETE).

    Four queries at most for any number of studies; the objects passed in are updated too
    (several may stand for one study), so events built from them say what the database says.
    """
    by_pk = {s.pk: s for s in studies}
    if not by_pk:
        return
    now = timezone.now()
    flagged = studies_with_finding(list(by_pk))  # the finding rule (analysis.findings)
    _studies_set(studies, "ai_flagged", {pk: pk in flagged for pk in by_pk}, now=now)
    watched = [pk for pk, s in by_pk.items() if s.status in (Study.Status.RECEIVED, Study.Status.ANALYSING)]
    if watched:
        busy = _studies_with(watched, state__in=[Analysis.State.QUEUED, Analysis.State.RUNNING])
        _studies_set(
            studies,
            "status",
            {pk: Study.Status.ANALYSING if pk in busy else Study.Status.AI_COMPLETE for pk in watched},
            now=now,
        )


def _studies_with(study_ids: list[int], **analysis_filters: Any) -> set[int]:
    """The studies among these with an analysis matching the filters. Starts from the
    studies' images (a few index probes), never from the analysis table, which grows forever."""
    matching = Analysis.objects.filter(image=OuterRef("pk"), **analysis_filters)
    return set(
        Image.objects.filter(study_id__in=study_ids)
        .filter(Exists(matching))
        .order_by()
        .values_list("study_id", flat=True)
        .distinct()
    )


def _studies_set(studies: list[Study], field: str, wanted: dict[int, Any], *, now: dt.datetime) -> None:
    """Write `field` where it differs from `wanted` (one UPDATE per distinct value)."""
    current = {s.pk: getattr(s, field) for s in studies}
    changed = {pk for pk, value in wanted.items() if current[pk] != value}
    for value in {wanted[pk] for pk in changed}:
        Study.objects.filter(pk__in=[pk for pk in changed if wanted[pk] == value]).update(
            **{field: value, "updated_at": now}
        )
    for study in studies:
        if study.pk in changed:
            setattr(study, field, wanted[study.pk])
            study.updated_at = now
