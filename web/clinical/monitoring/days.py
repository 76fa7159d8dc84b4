"""Each model's results counted day by day (local days, settings.TIME_ZONE), with the finding
rule's query forms (web.clinical.analysis.findings).

A past day is counted once into ModelDay rows (one per model and day; CountedDay says the day
is done), so that a window adds up a few hundred rows instead of counting a year of results on
every request; today, the window's partial first day and any day not counted yet are counted
live, by the same query. Counts stay exact when a past day's results change (a late commit, an
admin's edit, a deletion): the database records every write to a finished result in
ResultChange in the writing transaction (migration 0020_model_days's trigger), and the next count takes
those records first and counts their days again. A day's score histogram is kept in the bins of
the reference it was counted against; when the reference changes, the day is counted again.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.postgres.expressions import ArraySubquery
from django.contrib.postgres.fields import ArrayField
from django.db import connection, transaction
from django.db.models import (
    Case,
    Count,
    F,
    FloatField,
    Func,
    IntegerField,
    Max,
    OuterRef,
    Q,
    QuerySet,
    Value,
    When,
)
from django.db.models.functions import TruncDate
from django.utils import timezone

from web.clinical.analysis.findings import result_kind_expression, result_kind_q
from web.clinical.models import Analysis, Annotation, CountedDay, ModelDay, ResultChange
from web.clinical.monitoring.reference import scored_q

KINDS = ("finding", "negative", "not_applicable", "experimental", "placeholder")
VERDICTS = tuple(Annotation.Verdict.values)  # agree, disagree, uncertain
Key = tuple[str, str, str]  # model id, checksum, condition
CutsOf = Callable[[str, str], list[float]]  # (model id, checksum) -> its reference's cuts
_LOCK = 0x6D6F6E69  # the advisory lock that serialises counting days (any constant)


@dataclass
class Tally:
    """One model's results of one day (or of a window, once added up)."""

    analysed: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    scored: int = 0
    flagged: int = 0
    verdicts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VERDICTS, 0))  # on findings
    verdicts_on_negatives: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VERDICTS, 0))
    missed: set[int] = field(default_factory=set)  # AI-missed records of its condition, on images it read
    threshold: float | None = None
    last_result: dt.datetime | None = None
    last_clinical: dt.datetime | None = None
    cuts: list[float] | None = None  # the bins of `histogram`; None: no day added yet
    histogram: list[int] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.analysed += other.analysed
        self.counts = {k: self.counts[k] + other.counts[k] for k in KINDS}
        self.scored += other.scored
        self.flagged += other.flagged
        self.verdicts = {v: self.verdicts[v] + other.verdicts[v] for v in VERDICTS}
        self.verdicts_on_negatives = {
            v: self.verdicts_on_negatives[v] + other.verdicts_on_negatives[v] for v in VERDICTS
        }
        self.missed = self.missed | other.missed
        self.threshold = _max(self.threshold, other.threshold)
        self.last_result = _max(self.last_result, other.last_result)
        self.last_clinical = _max(self.last_clinical, other.last_clinical)
        if self.cuts is None:
            self.cuts, self.histogram = other.cuts, list(other.histogram)
        elif self.cuts == other.cuts and self.histogram and other.histogram:
            self.histogram = [a + b for a, b in zip(self.histogram, other.histogram, strict=True)]
        elif self.cuts != other.cuts or bool(self.histogram) != bool(other.histogram):
            self.cuts, self.histogram = [float("nan")], []  # days binned differently: no histogram


def _max(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else max(a, b)


def window_results(*, start: dt.datetime, end: dt.datetime) -> QuerySet[Analysis]:
    """The finished results of registered models that finished in (start, end]."""
    return _finished().filter(finished_at__gt=start, finished_at__lte=end)


def _finished() -> QuerySet[Analysis]:
    return Analysis.objects.filter(state=Analysis.State.SUCCEEDED).exclude(model_id="")


def zone() -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(settings.TIME_ZONE)


def local_day(moment: dt.datetime) -> dt.date:
    return moment.astimezone(zone()).date()


def day_start(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.min, tzinfo=zone())


def day_tallies(
    *, start: dt.datetime, end: dt.datetime, cuts_of: CutsOf, counted: bool = True
) -> dict[tuple[Key, dt.date], Tally]:
    """Each model's results that finished in (start, end], per local day. The past days whole
    inside the window come from ModelDay (counted first where missing or changed); the rest is
    counted live. counted=False counts everything live (the same numbers, slower)."""
    results = window_results(start=start, end=end)
    first = local_day(start) + dt.timedelta(days=1 if day_start(local_day(start)) <= start else 0)
    last = min(local_day(end), local_day(timezone.now())) - dt.timedelta(days=1)
    # Past days are kept counted on PostgreSQL only (its triggers say which days changed); the
    # embedded SQLite counts every request live: the same numbers, for a one-machine site.
    if not counted or first > last or connection.vendor != "postgresql":
        return _tallies_count(results, cuts_of)
    days_count(first=first, last=last, cuts_of=cuts_of)
    rows = list(ModelDay.objects.filter(day__gte=first, day__lte=last))
    wanted = {key: cuts_of(key[0], key[1]) for key in {_key(row) for row in rows}}
    stale = sorted({row.day for row in rows if row.cuts != wanted[_key(row)]})
    if stale:  # counted against an earlier reference: counted again in the current bins
        days_count(first=first, last=last, cuts_of=cuts_of, again=stale)
        rows = list(ModelDay.objects.filter(day__gte=first, day__lte=last))
    # Two ranges, each its own index range (an OR inside the window's range would scan it all).
    live = _finished().filter(
        Q(finished_at__gt=start, finished_at__lt=day_start(first))
        | Q(finished_at__gte=day_start(last + _DAY), finished_at__lte=end)
    )
    tallies = _tallies_count(live, cuts_of, few=True)
    for row in rows:
        tallies[(_key(row), row.day)] = Tally(
            analysed=row.analysed,
            counts={kind: getattr(row, kind) for kind in KINDS},
            scored=row.scored,
            flagged=row.flagged,
            verdicts={v: getattr(row, v) for v in VERDICTS},
            verdicts_on_negatives={v: getattr(row, f"negative_{v}") for v in VERDICTS},
            missed=set(row.missed),
            threshold=row.threshold,
            last_result=row.last_result,
            last_clinical=row.last_clinical,
            cuts=list(row.cuts),
            histogram=list(row.histogram),
        )
    return tallies


_DAY = dt.timedelta(days=1)


def _key(row: ModelDay) -> Key:
    return (row.model_id, row.model_sha256, row.condition)


def days_count(*, first: dt.date, last: dt.date, cuts_of: CutsOf, again: Iterable[dt.date] = ()) -> None:
    """Make sure every past day from `first` to `last` is counted, and counted since its results
    last changed (`again`: count these days again whatever). Idempotent; concurrent callers
    take turns (an advisory lock) and the second finds the work done."""
    today = local_day(timezone.now())
    last = min(last, today - _DAY)
    again = {d for d in again if first <= d <= last}
    if first > last:
        return
    today_start = day_start(today)
    span = {first + dt.timedelta(days=i) for i in range((last - first).days + 1)}
    if (
        not again
        and not ResultChange.objects.filter(lo__lt=today_start).exists()
        and CountedDay.objects.filter(day__gte=first, day__lte=last).count() == len(span)
    ):
        return
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK])
            # The changes are taken first, the results counted after, each statement seeing what
            # was committed when it began: a result committed before this statement is in the
            # counts below; one committed after it leaves its change for the next count.
            cursor.execute(
                f"DELETE FROM {ResultChange._meta.db_table} WHERE lo < %s RETURNING lo, hi", [today_start]
            )
            changes = cursor.fetchall()
        changed: set[dt.date] = set(again)
        for lo, hi in changes:
            day, end = local_day(lo), min(local_day(hi), today - _DAY)
            while day <= end:
                changed.add(day)
                day += _DAY
        counted = set(CountedDay.objects.filter(day__gte=first, day__lte=last).values_list("day", flat=True))
        todo = (span - counted) | (changed & span)
        # Changed days outside the span are forgotten: counted afresh when a window needs them.
        forget = todo | changed
        ModelDay.objects.filter(day__in=sorted(forget)).delete()
        CountedDay.objects.filter(day__in=sorted(forget)).delete()
        if not todo:
            return
        ranges = Q()
        for run_first, run_last in _runs(sorted(todo)):
            ranges |= Q(finished_at__gte=day_start(run_first), finished_at__lt=day_start(run_last + _DAY))
        tallies = _tallies_count(_finished().filter(ranges), cuts_of)
        ModelDay.objects.bulk_create(
            [
                ModelDay(
                    model_id=key[0],
                    model_sha256=key[1],
                    condition=key[2],
                    day=day,
                    analysed=t.analysed,
                    scored=t.scored,
                    flagged=t.flagged,
                    missed=sorted(t.missed),
                    threshold=t.threshold,
                    last_result=t.last_result,
                    last_clinical=t.last_clinical,
                    cuts=t.cuts or [],
                    histogram=t.histogram,
                    **t.counts,
                    **t.verdicts,
                    **{f"negative_{v}": n for v, n in t.verdicts_on_negatives.items()},
                )
                for (key, day), t in tallies.items()
            ],
            batch_size=1000,
        )
        CountedDay.objects.bulk_create([CountedDay(day=day) for day in sorted(todo)])


def _runs(days: list[dt.date]) -> list[tuple[dt.date, dt.date]]:
    runs: list[tuple[dt.date, dt.date]] = []
    for day in days:
        if runs and runs[-1][1] + _DAY == day:
            runs[-1] = (runs[-1][0], day)
        else:
            runs.append((day, day))
    return runs


def _tallies_count(
    results: QuerySet[Analysis], cuts_of: CutsOf, *, few: bool = False
) -> dict[tuple[Key, dt.date], Tally]:
    """Count these results per model and local day: the counts, the verdicts and missed records
    (_annotations_count), then the scores in each model's reference bins (bin i holds
    cuts[i-1] <= p < cuts[i]; the cuts are sorted). `few`: a day or two of results (today's, a
    partial day's)."""
    clinical = Q(experimental=False, is_placeholder=False)
    day = TruncDate("finished_at", tzinfo=zone())
    tallies: dict[tuple[Key, dt.date], Tally] = {}
    for row in (
        results.annotate(day=day)
        .values("model_id", "model_sha256", "condition", "day")
        .annotate(
            analysed=Count("pk"),
            scored=Count("pk", filter=scored_q()),
            flagged=Count("pk", filter=scored_q() & Q(positive=True)),
            threshold=Max("threshold"),
            last_result=Max("finished_at"),
            last_clinical=Max("finished_at", filter=clinical),
            **{kind: Count("pk", filter=result_kind_q(kind)) for kind in KINDS},
        )
        .order_by()
    ):
        key = (row["model_id"], row["model_sha256"], row["condition"])
        tallies[(key, row["day"])] = Tally(
            analysed=row["analysed"],
            counts={kind: row[kind] for kind in KINDS},
            scored=row["scored"],
            flagged=row["flagged"],
            threshold=row["threshold"],
            last_result=row["last_result"],
            last_clinical=row["last_clinical"],
            cuts=[],
        )
    _annotations_count(results, tallies, few=few)
    cuts = {key: cuts_of(key[0], key[1]) for key in {key for key, _ in tallies}}
    binned = sorted((key, c) for key, c in cuts.items() if c)
    if binned:
        # The bin of a score: how many cuts are <= it (PostgreSQL's width_bucket over the sorted
        # cuts), so bin i holds cuts[i-1] <= p < cuts[i].
        bucket = Case(
            *[
                When(Q(model_id=key[0], model_sha256=key[1], condition=key[2]), then=score_bin(c))
                for key, c in binned
            ],
            default=None,
            output_field=IntegerField(),
        )
        for row in (
            results.filter(scored_q(), probability__isnull=False)
            .annotate(day=day, bin=bucket)
            .exclude(bin=None)
            .values("model_id", "model_sha256", "condition", "day", "bin")
            .annotate(n=Count("pk"))
            .order_by()
        ):
            key = (row["model_id"], row["model_sha256"], row["condition"])
            tally = tallies.get((key, row["day"]))
            if tally is not None:
                if not tally.histogram:
                    tally.cuts, tally.histogram = list(cuts[key]), [0] * (len(cuts[key]) + 1)
                tally.histogram[row["bin"]] += row["n"]
    for (key, _), tally in tallies.items():
        if cuts[key] and not tally.histogram:  # no scored result that day
            tally.cuts, tally.histogram = list(cuts[key]), [0] * (len(cuts[key]) + 1)
    return tallies


def _annotations_count(
    results: QuerySet[Analysis], tallies: dict[tuple[Key, dt.date], Tally], *, few: bool
) -> None:
    """Current verdicts (one per radiologist and result) on these results' findings and
    negatives, and the AI-missed records of each result's condition on its image: joined to the
    results, or, when they are few, looked up result by result (_annotations_count_each)."""
    if few:
        _annotations_count_each(results, tallies)
        return
    analyses = results.values("pk")
    on = "analysis__"
    finding, negative = result_kind_q("finding", on), result_kind_q("negative", on)
    counts = {
        **{f"f_{v}": Count("pk", filter=finding & Q(verdict=v)) for v in VERDICTS},
        **{f"n_{v}": Count("pk", filter=negative & Q(verdict=v)) for v in VERDICTS},
    }
    for row in (
        Annotation.objects.filter(analysis_id__in=analyses, verdict__in=VERDICTS)
        .annotate(day=TruncDate(f"{on}finished_at", tzinfo=zone()))
        .values(f"{on}model_id", f"{on}model_sha256", f"{on}condition", "day")
        .annotate(**counts)
        .order_by()
    ):
        key = (row[f"{on}model_id"], row[f"{on}model_sha256"], row[f"{on}condition"])
        tally = tallies.get((key, row["day"]))
        if tally is not None:
            tally.verdicts = {v: row[f"f_{v}"] for v in VERDICTS}
            tally.verdicts_on_negatives = {v: row[f"n_{v}"] for v in VERDICTS}
    read = "image__analyses__"
    missed = Annotation.objects.exclude(missed_condition="").filter(
        **{f"{read}in": analyses, f"{read}condition": F("missed_condition")}
    )
    for pk, model_id, sha, condition, day in (
        missed.annotate(day=TruncDate(f"{read}finished_at", tzinfo=zone()))
        .values_list("pk", f"{read}model_id", f"{read}model_sha256", f"{read}condition", "day")
        .order_by()
        .distinct()
    ):
        tally = tallies.get(((model_id, sha, condition), day))
        if tally is not None:
            tally.missed.add(pk)


def _annotations_count_each(results: QuerySet[Analysis], tallies: dict[tuple[Key, dt.date], Tally]) -> None:
    """_annotations_count for a day or two of results: each result's verdicts and missed records
    looked up by the annotations' indexes (on the result, on the image), which a join over the
    whole annotation table would not use."""
    verdicts = Annotation.objects.filter(analysis=OuterRef("pk"), verdict__in=VERDICTS)
    missed = Annotation.objects.filter(image=OuterRef("image"), missed_condition=OuterRef("condition"))
    rows = results.annotate(
        day=TruncDate("finished_at", tzinfo=zone()),
        kind=result_kind_expression(),
        verdict_list=ArraySubquery(verdicts.values("verdict")),
        missed_list=ArraySubquery(missed.values("pk")),
    ).values_list("model_id", "model_sha256", "condition", "day", "kind", "verdict_list", "missed_list")
    for model_id, sha, condition, day, kind, verdict_list, missed_list in rows.order_by():
        tally = tallies.get(((model_id, sha, condition), day))
        if tally is None:
            continue
        tally.missed |= set(missed_list)
        into = {"finding": tally.verdicts, "negative": tally.verdicts_on_negatives}.get(kind)
        if into is not None:
            for verdict in verdict_list:
                into[verdict] += 1


def score_bin(cuts: Sequence[float]) -> Any:
    """The bin of a result's score: how many cuts are <= it, so bin i holds cuts[i-1] <= p <
    cuts[i] (PostgreSQL's width_bucket over the sorted cuts; the same as a CASE elsewhere)."""
    if connection.vendor == "postgresql":
        return Func(
            F("probability"),
            Value(list(cuts), output_field=ArrayField(FloatField())),
            function="width_bucket",
            output_field=IntegerField(),
        )
    return Case(
        *[When(probability__lt=cut, then=Value(i)) for i, cut in enumerate(cuts)],
        default=Value(len(cuts)),
        output_field=IntegerField(),
    )
