"""Each model's results week by week (weeks start on Monday, local time): the page's charts and
the weekly summary (CSV, PDF) read these. The results' counts are added up from each day's
(monitoring.days), verdicts included."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from django.conf import settings
from django.utils import timezone

from core.drift import effective_n, wilson_interval
from web.clinical.monitoring.days import KINDS, VERDICTS, day_start, day_tallies, local_day
from web.clinical.monitoring.reference import reference_cuts
from web.clinical.monitoring.summary import ModelMonitoring


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
    local = local_day(moment)
    return local - dt.timedelta(days=local.weekday())


def monitoring_weeks(
    *, models: list[ModelMonitoring], weeks: int, now: dt.datetime | None = None, counted: bool = True
) -> dict[tuple[str, str, str], list[Week]]:
    """(model id, checksum, condition) -> its last `weeks` weeks, oldest first, every week
    present (an empty week has zero counts), each with its expected flag-rate band."""
    now = now or timezone.now()
    first = week_start(now) - dt.timedelta(weeks=weeks - 1)
    start = day_start(first)
    keys = {(m.model_id, m.model_sha256, m.condition): m for m in models}
    series: dict[tuple[str, str, str], dict[dt.date, Week]] = {
        key: {first + dt.timedelta(weeks=i): Week(start=first + dt.timedelta(weeks=i)) for i in range(weeks)}
        for key in keys
    }
    cuts_of = reference_cuts(now=now)
    for (key, day), tally in day_tallies(
        start=start - dt.timedelta(microseconds=1), end=now, cuts_of=cuts_of, counted=counted
    ).items():
        week = series.get(key, {}).get(day - dt.timedelta(days=day.weekday()))
        if week is not None:
            week.analysed += tally.analysed
            week.scored += tally.scored
            week.flagged += tally.flagged
            week.counts = {kind: week.counts.get(kind, 0) + tally.counts[kind] for kind in KINDS}
            week.verdicts = {v: week.verdicts.get(v, 0) + tally.verdicts[v] for v in VERDICTS}
    confidence = settings.RADTRIAGE_MONITORING_BAND_CONFIDENCE
    for key, model in keys.items():
        for week in series[key].values():
            if model.reference.flag_rate is not None and week.scored:
                n = effective_n(week.scored, model.reference.n)
                week.band = wilson_interval(model.reference.flag_rate, n, confidence=confidence)
    return {key: sorted(weeks_of.values(), key=lambda w: w.start) for key, weeks_of in series.items()}
