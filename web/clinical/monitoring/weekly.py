"""Each model's results week by week (weeks start on Monday, local time): the page's charts and
the weekly summary (CSV, PDF) read these. Counted in the database, two queries in all."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import Count, Q
from django.db.models.functions import TruncWeek
from django.utils import timezone

from core.drift import effective_n, wilson_interval
from web.clinical.analysis.findings import result_kind_q
from web.clinical.models import Annotation
from web.clinical.monitoring.reference import scored_q
from web.clinical.monitoring.summary import KINDS, VERDICTS, ModelMonitoring, window_results


@dataclass
class Week:
    start: dt.date
    analysed: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    scored: int = 0
    flagged: int = 0
    verdicts: dict[str, int] = field(default_factory=dict)  # on findings
    band: tuple[float, float] | None = None

    @property
    def flag_rate(self) -> float | None:
        return self.flagged / self.scored if self.scored else None

    @property
    def not_applicable_rate(self) -> float | None:
        return self.counts.get("not_applicable", 0) / self.analysed if self.analysed else None

    @property
    def agreement(self) -> float | None:
        judged = self.verdicts.get("agree", 0) + self.verdicts.get("disagree", 0)
        return self.verdicts.get("agree", 0) / judged if judged else None


def week_start(moment: dt.datetime) -> dt.date:
    local = timezone.localtime(moment).date()
    return local - dt.timedelta(days=local.weekday())


def monitoring_weeks(
    *, models: list[ModelMonitoring], weeks: int, now: dt.datetime | None = None
) -> dict[tuple[str, str, str], list[Week]]:
    """(model id, checksum, condition) -> its last `weeks` weeks, oldest first, every week
    present (an empty week has zero counts), each with its expected flag-rate band."""
    now = now or timezone.now()
    first = week_start(now) - dt.timedelta(weeks=weeks - 1)
    start = timezone.make_aware(dt.datetime.combine(first, dt.time.min))
    keys = {(m.model_id, m.model_sha256, m.condition): m for m in models}
    series: dict[tuple[str, str, str], dict[dt.date, Week]] = {
        key: {first + dt.timedelta(weeks=i): Week(start=first + dt.timedelta(weeks=i)) for i in range(weeks)}
        for key in keys
    }
    results = window_results(start=start - dt.timedelta(microseconds=1), end=now)
    rows = (
        results.annotate(week=TruncWeek("finished_at"))
        .values("model_id", "model_sha256", "condition", "week")
        .annotate(
            analysed=Count("pk"),
            scored=Count("pk", filter=scored_q()),
            flagged=Count("pk", filter=scored_q() & Q(positive=True)),
            **{kind: Count("pk", filter=result_kind_q(kind)) for kind in KINDS},
        )
        .order_by()
    )
    for row in rows:
        week = _week_of(series, (row["model_id"], row["model_sha256"], row["condition"]), row["week"])
        if week is not None:
            week.analysed, week.scored, week.flagged = row["analysed"], row["scored"], row["flagged"]
            week.counts = {kind: row[kind] for kind in KINDS}
    finding = result_kind_q("finding", "analysis__")
    verdicts = (
        Annotation.objects.exclude(verdict="")
        .filter(
            finding,
            analysis__finished_at__gt=start - dt.timedelta(microseconds=1),
            analysis__finished_at__lte=now,
        )
        .annotate(week=TruncWeek("analysis__finished_at"))
        .values("analysis__model_id", "analysis__model_sha256", "analysis__condition", "week")
        .annotate(**{v: Count("pk", filter=Q(verdict=v)) for v in VERDICTS})
        .order_by()
    )
    for row in verdicts:
        key = (row["analysis__model_id"], row["analysis__model_sha256"], row["analysis__condition"])
        week = _week_of(series, key, row["week"])
        if week is not None:
            week.verdicts = {v: row[v] for v in VERDICTS}
    confidence = settings.RADTRIAGE_MONITORING_BAND_CONFIDENCE
    for key, model in keys.items():
        for week in series[key].values():
            if model.reference.flag_rate is not None and week.scored:
                n = effective_n(week.scored, model.reference.n)
                week.band = wilson_interval(model.reference.flag_rate, n, confidence=confidence)
    return {key: sorted(weeks_of.values(), key=lambda w: w.start) for key, weeks_of in series.items()}


def _week_of(
    series: dict[tuple[str, str, str], dict[dt.date, Week]], key: tuple[str, str, str], moment: dt.datetime
) -> Week | None:
    weeks_of = series.get(key)
    if weeks_of is None or moment is None:
        return None
    day = timezone.localtime(moment).date() if timezone.is_aware(moment) else moment.date()
    return weeks_of.get(day)
