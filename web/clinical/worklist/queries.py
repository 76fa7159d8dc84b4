"""queries: read-only queries."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db.models import (
    Case,
    Count,
    DateTimeField,
    Exists,
    F,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    When,
)
from django.db.models.functions import Coalesce
from django.utils import timezone

from core.applicability import REGIONS, region_of_body_part
from core.conditions import CONDITION_URGENCY, CONDITIONS, KNOWN_BODY_PARTS, REGION_BODY_PART
from web.clinical.analysis.findings import (
    result_record,
    results_ranked,
    strongest_of,
    study_finding_stored_q,
    study_strongest_result,
)
from web.clinical.models import Analysis, BatchItem, Image, Patient, Study
from web.clinical.worklist.states import READ_STATES


def _analysis_count(**filters: Any) -> Coalesce:
    """Per study, computed only for the rows on the page (PostgreSQL evaluates a subquery in
    the select list after the sort and the limit)."""
    counted = (
        Analysis.objects.filter(image__study=OuterRef("pk"), **filters)
        .order_by()
        .values("image__study")
        .annotate(n=Count("pk"))
        .values("n")[:1]
    )
    return Coalesce(Subquery(counted), 0)


@dataclass(frozen=True)
class WorklistFilters:
    """What the worklist shows: every field optional; the page and the API parse the same
    query string with `worklist_filters_parse`."""

    status: str = ""
    condition: str = ""
    positive_only: bool = False
    region: str = ""
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    assigned: str = ""  # "", "mine" or "unassigned"
    q: str = ""
    batch: int | None = None  # only the studies of this batch's files
    alert: bool = False  # only the studies a radiologist is alerted to (ALERT_RULE)
    sort: str = ""  # a column of WORKLIST_SORTS, "-" first for descending; "": triage order


# The body regions a row is labelled with and the worklist filters by: the body part a PNG/JPEG
# of a recognised region is filed under (core.conditions.REGION_BODY_PART: CHEST, KNEE,
# EXTREMITY), and OTHER. A DICOM body part belongs to the region the applicability check gives
# it (core.applicability.region_of_body_part: HAND is an EXTREMITY, KNEE a KNEE).
OTHER_REGION = "OTHER"
WORKLIST_REGIONS: tuple[str, ...] = (*(REGION_BODY_PART[r] for r in REGIONS), OTHER_REGION)
# Earlier values of the filter (and the recogniser's own names), still understood.
REGION_ALIASES: dict[str, str] = {**{r: REGION_BODY_PART[r] for r in REGIONS}, "other": OTHER_REGION}


def body_part_region(body_part: str) -> str:
    """The region label a row shows for a study's body part: 'HAND' -> 'EXTREMITY'; '' if none."""
    if not body_part:
        return ""
    region = region_of_body_part(body_part)
    return REGION_BODY_PART[region] if region else OTHER_REGION


# Each region label -> the known body parts it stands for (the filter's query; the row's label).
_REGION_PARTS: dict[str, frozenset[str]] = {
    label: frozenset(p for p in KNOWN_BODY_PARTS if body_part_region(p) == label)
    for label in WORKLIST_REGIONS
}


def _region_q(label: str) -> Q:
    if label == OTHER_REGION:  # any body part no region claims (not a blank one)
        claimed = set().union(*(_REGION_PARTS[r] for r in WORKLIST_REGIONS if r != OTHER_REGION))
        return ~Q(body_part__in=sorted(claimed)) & ~Q(body_part="")
    return Q(body_part__in=sorted(_REGION_PARTS[label]))


def region_parse(value: str) -> str:
    """A region filter value -> its label; WorklistFilterError for one the worklist does not know."""
    label = value.upper() if value.upper() in WORKLIST_REGIONS else REGION_ALIASES.get(value.lower(), "")
    if not label:
        raise WorklistFilterError(
            "region", f"Unknown body region '{value}'; use one of {', '.join(WORKLIST_REGIONS)}."
        )
    return label


ASSIGNED_CHOICES = ("mine", "unassigned")


class WorklistFilterError(ValueError):
    """A filter value the worklist does not know; `field` and `str()` say which and why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# The columns a reader may sort the worklist by (?sort=<key> or -<key>): key -> field. The
# patient's fields are read from the study's copies of them (worklist.patients), on indexes.
WORKLIST_SORTS: dict[str, str] = {
    "priority": "priority",
    "patient": "patient_name",
    "age": "patient_birth_date",
    "sex": "patient_sex",
    "modality": "modality",
    "accession": "accession_number",
    "region": "body_part",
    "date": "study_date",
    "status": "status",
    "waiting": "created_at",
}


# Ascending age is the latest birth date first; ascending waiting, the latest arrival first.
SORTS_REVERSED = {"age", "waiting"}
# The sort columns that may be NULL (the others are NOT NULL: NULLS LAST changes nothing there).
SORTS_NULLABLE = {"age", "date"}


# ?positive= takes these; anything else is refused (a typo would list every study as if filtered).
TRUE_WORDS, FALSE_WORDS = ("1", "true", "on", "yes"), ("0", "false", "off", "no")


def worklist_filters_parse(params: Mapping[str, Any]) -> WorklistFilters:
    """A query string -> WorklistFilters. Raises WorklistFilterError on a value it cannot use."""

    def text(name: str) -> str:
        return str(params.get(name) or "").strip()

    def date(name: str) -> dt.date | None:
        value = text(name)
        if not value:
            return None
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            raise WorklistFilterError(name, f"{name}: use a date as YYYY-MM-DD.") from None

    status, condition, region, assigned = text("status"), text("condition"), text("region"), text("assigned")
    if status and status not in Study.Status.values:
        raise WorklistFilterError("status", f"Unknown status; use one of {', '.join(Study.Status.values)}.")
    if condition and condition not in CONDITIONS:
        raise WorklistFilterError("condition", f"Unknown condition; use one of {', '.join(CONDITIONS)}.")
    if assigned and assigned not in ASSIGNED_CHOICES:
        raise WorklistFilterError("assigned", "Use assigned=mine or assigned=unassigned.")
    positive, alert = text("positive").lower(), text("alert").lower()
    for name, value in (("positive", positive), ("alert", alert)):
        if value not in ("", *TRUE_WORDS, *FALSE_WORDS):
            raise WorklistFilterError(name, f"{name}: use true or false.")
    sort = text("sort")
    if sort and sort.lstrip("-") not in WORKLIST_SORTS:
        raise WorklistFilterError(
            "sort", f"sort: use one of {', '.join(WORKLIST_SORTS)}, '-' first for descending."
        )
    batch = text("batch")
    if batch and not batch.isdigit():
        raise WorklistFilterError("batch", "A batch id (a number).")
    return WorklistFilters(
        status=status,
        condition=condition,
        positive_only=positive in TRUE_WORDS,
        region=region_parse(region) if region else "",
        date_from=date("date_from"),
        date_to=date("date_to"),
        assigned=assigned,
        q=text("q")[:100],
        batch=int(batch) if batch else None,
        alert=alert in TRUE_WORDS,
        sort=sort,
    )


def study_worklist(
    *, status: str | None = None, filters: WorklistFilters | None = None, user: Any = None
) -> QuerySet[Study]:
    """Studies in triage order:

    1. the priority a person gave (STAT, urgent, routine); the AI never changes it;
    2. within a priority, a study waiting longer than RADTRIAGE_WAITING_CAP_HOURS first
       (longest waiting first), so AI-negative studies never starve;
    3. then studies with a real AI finding, by the urgency of the condition
       (core.conditions.CONDITION_URGENCY), then by its probability (the strongest finding's,
       kept on the study by the finding rule: Study.finding_urgency, finding_probability);
    4. then the longest waiting first.

    A study read (reviewed or reported) no longer waits. `strongest_id` is the result the row shows
    (analysis.findings.study_strongest_result: a finding when there is one, else an applicable
    result; a not-applicable, experimental or placeholder one only when nothing else finished).
    One row, or the few studies still to be read, read well from this; a page of the whole
    worklist comes from `worklist_rows`, in the same order.
    """
    filters = filters or WorklistFilters(status=status or "")
    return _row_annotations(_filtered(Study.objects.all(), filters, user=user)).order_by(
        *_order(filters.sort, overdue=True)
    )


def _overdue_q() -> Q:
    """On Study: still to be read and waiting longer than the cap."""
    cap = timezone.now() - dt.timedelta(hours=settings.RADTRIAGE_WAITING_CAP_HOURS)
    return Q(created_at__lte=cap) & ~Q(status__in=READ_STATES)


def _overdue_since() -> Case:
    return Case(When(_overdue_q(), then=F("created_at")), default=None, output_field=DateTimeField())


def _row_annotations(qs: QuerySet[Study]) -> QuerySet[Study]:
    """What a row shows beyond the study's columns (PostgreSQL evaluates these subqueries for
    the rows returned only, after the sort and the limit)."""
    images = (
        Image.objects.filter(study=OuterRef("pk"))
        .order_by()
        .values("study")
        .annotate(n=Count("pk"))
        .values("n")[:1]
    )
    return qs.select_related("patient", "assigned_radiologist").annotate(
        image_count=Coalesce(Subquery(images), 0),
        pending_count=_analysis_count(state__in=[Analysis.State.QUEUED, Analysis.State.RUNNING]),
        failed_count=_analysis_count(state=Analysis.State.FAILED),
        overdue_since=_overdue_since(),
        strongest_id=study_strongest_result(),
    )


def _order(sort: str, *, overdue: bool) -> list[Any]:
    """The worklist's ORDER BY: the reader's column first, if any, then the triage order. Without
    `overdue`, for studies none of which waits past the cap: the order the triage index holds."""
    triage: list[Any] = [
        "priority",
        *([F("overdue_since").asc(nulls_last=True)] if overdue else []),
        "-finding_urgency",
        "-finding_probability",
        "created_at",
        "id",
    ]
    if not sort:
        return triage
    key = sort.lstrip("-")
    column = WORKLIST_SORTS[key]
    descending = sort.startswith("-") != (key in SORTS_REVERSED)
    # Empty values last; a column that is never empty sorts plainly, as its index reads backwards.
    nulls_last = True if key in SORTS_NULLABLE else None
    first = F(column).desc(nulls_last=nulls_last) if descending else F(column).asc(nulls_last=nulls_last)
    return [first, *triage]


# How far past the first row shown the worklist counts its studies (WorklistRows.count).
COUNT_CAP = 10_000


class WorklistRows:
    """The worklist as the page and the API page through it: `count()` and slices, in
    study_worklist's order, each slice read on indexes at any number of studies.

    The order puts the studies waiting past the cap first in their priority; that depends on
    the clock, so no index holds it. Those studies are few (they are still to be read), so a
    slice is: all of them, plus the slice of the other studies in the triage index's order
    (started early enough to leave room for them), ordered together by the database with the
    full order; the slice's rows are then loaded with what a row shows (one more query)."""

    def __init__(self, *, filters: WorklistFilters, user: Any, count_from: int = 0) -> None:
        self.filters, self.user = filters, user
        self.count_from = max(0, count_from)
        self._base = _filtered(Study.objects.all(), filters, user=user)
        self._overdue: list[int] | None = None
        self._count: int | None = None

    def overdue_ids(self) -> list[int]:
        if self._overdue is None:
            self._overdue = list(self._base.filter(_overdue_q()).values_list("pk", flat=True))
        return self._overdue

    def count(self) -> int:
        """The number of matching studies, counted up to COUNT_CAP past `count_from` (the
        first row the caller shows) and one more: past that, `count_capped` is True and the
        count says "more than count - 1". Counting a million studies exactly costs more than
        the page; a count that stops costs what the rows up to it cost."""
        if self._count is None:
            limit = self.count_from + COUNT_CAP + 1
            overdue = len(self.overdue_ids())
            others = self._others().order_by()[: max(0, limit - overdue)].count()
            self._count = min(overdue + others, limit)
        return self._count

    @property
    def count_capped(self) -> bool:
        """Whether count() stopped: more studies match than it says."""
        return self.count() > self.count_from + COUNT_CAP

    def __len__(self) -> int:
        return self.count()

    def _others(self) -> QuerySet[Study]:
        return self._base.exclude(pk__in=self.overdue_ids())

    def __getitem__(self, key: slice) -> list[Study]:
        start, stop = key.start or 0, key.stop
        if stop is None or key.step is not None:
            raise TypeError("WorklistRows takes slices with an end and no step.")
        overdue = self.overdue_ids()
        # The slice's rows are among all the overdue ones and these others (see the class).
        skip = max(0, start - len(overdue))
        others = self._others().order_by(*_order(self.filters.sort, overdue=False))
        candidates = [*overdue, *others.values_list("pk", flat=True)[skip:stop]]
        ordered = list(
            Study.objects.filter(pk__in=candidates)
            .annotate(overdue_since=_overdue_since())
            .order_by(*_order(self.filters.sort, overdue=True))
            .values_list("pk", flat=True)
        )[start - skip : stop - skip]
        # The row's "analyse" form lists the study's image ids: one query for the page.
        images = Prefetch(
            "images", queryset=Image.objects.only("pk", "study_id").order_by("created_at", "id")
        )
        found = _row_annotations(Study.objects.filter(pk__in=ordered)).prefetch_related(images)
        rows = {s.pk: s for s in found}
        return [rows[pk] for pk in ordered]


def worklist_rows(*, filters: WorklistFilters, user: Any, count_from: int = 0) -> WorklistRows:
    """The worklist's rows for a page or the API (study_worklist's order and filters);
    `count_from`: the first row shown, from which the count goes on COUNT_CAP rows."""
    return WorklistRows(filters=filters, user=user, count_from=count_from)


# A radiologist is alerted to a study not yet read that a person marked STAT, or whose AI
# finding is of a condition of the highest urgency (core.conditions.CONDITION_URGENCY).
ALERT_URGENCY = max(CONDITION_URGENCY.values())


def alert_q() -> Q:
    """On Study: an open study that is STAT or has a finding of the most urgent conditions."""
    unread = ~Q(status__in=READ_STATES)
    # finding_urgency is the most urgent finding's (kept by the finding rule): the same as
    # asking whether a finding of these conditions stands.
    return unread & (Q(priority=Study.Priority.STAT) | Q(finding_urgency__gte=ALERT_URGENCY))


def _filtered(qs: QuerySet[Study], f: WorklistFilters, *, user: Any) -> QuerySet[Study]:
    if f.status:
        qs = qs.filter(status=f.status)
    if f.condition and f.positive_only:  # a finding for this condition, not any finding
        qs = qs.filter(study_finding_stored_q(f.condition))  # study_has_finding, kept on the study
    elif f.condition:  # a result (or a request) for this condition, whatever it says
        qs = qs.filter(Exists(Analysis.objects.filter(image__study=OuterRef("pk"), condition=f.condition)))
    elif f.positive_only:  # the stored flag: any finding, kept by the finding rule
        qs = qs.filter(ai_flagged=True)
    if f.region:
        qs = qs.filter(_region_q(f.region))
    if f.date_from:
        qs = qs.filter(study_date__gte=f.date_from)
    if f.date_to:
        qs = qs.filter(study_date__lte=f.date_to)
    if f.assigned == "mine":
        qs = qs.filter(assigned_radiologist=user) if user is not None else qs.none()
    elif f.assigned == "unassigned":
        qs = qs.filter(assigned_radiologist__isnull=True)
    if f.q:
        qs = qs.filter(_search_q(f.q))
    if f.alert:
        qs = qs.filter(alert_q())
    if f.batch is not None:
        files = BatchItem.objects.filter(batch_id=f.batch, image__isnull=False)
        qs = qs.filter(pk__in=files.values("image__study_id"))
    return qs


# A search matching at most this many patients lists their studies by the patient index; one
# matching more (a few letters) is left to a join.
SEARCH_PATIENTS_MAX = 2000


def _search_q(text: str) -> Q:
    """On Study: the patient's name or ID, or the accession number, contains `text` (PostgreSQL
    finds each on a trigram index). DICOM names are stored 'Family^Given': "Jane Doe" finds
    'Doe^Jane' too."""
    patients = Patient.objects.filter(
        Q(name__icontains=text)
        | Q(patient_id__icontains=text)
        | Q(name__icontains="^".join(reversed(text.split())))
    ).order_by()
    ids = list(patients.values_list("pk", flat=True)[: SEARCH_PATIENTS_MAX + 1])
    by_patient = Q(patient__in=patients) if len(ids) > SEARCH_PATIENTS_MAX else Q(patient_id__in=ids)
    return by_patient | Q(accession_number__icontains=text)


def worklist_strongest(studies: list[Study]) -> None:
    """Attach to each study `strongest` (the Analysis its row shows, or None), `strongest_result`
    (analysis.findings.result_record of it, or None) and `region` (body_part_region). A page of
    study_worklist rows costs one query; a study loaded with study_detail, none (its analyses
    are ranked in memory by the same rule)."""
    ids = [getattr(s, "strongest_id", None) for s in studies]
    by_id = {a.pk: a for a in Analysis.objects.filter(pk__in=[i for i in ids if i])}
    for study, strongest_id in zip(studies, ids, strict=True):
        if hasattr(study, "strongest_id"):
            strongest = by_id.get(strongest_id) if strongest_id else None
        else:
            strongest = strongest_of(a for image in study.images.all() for a in image.analyses.all())
        study.strongest = strongest  # type: ignore[attr-defined]
        study.strongest_result = result_record(strongest) if strongest else None  # type: ignore[attr-defined]
        study.region = body_part_region(study.body_part)  # type: ignore[attr-defined]


def worklist_neighbours(*, study_id: int, user: Any) -> tuple[int | None, int | None]:
    """The studies before and after this one in the worklist's own order (no filter) among
    the studies still to be read, this one included: where "previous" and "next" on the study
    page go. Read studies are left out, so the cost follows the open worklist, not the years of
    reported studies. None at either end."""
    waiting = ~Q(status__in=READ_STATES) | Q(pk=study_id)
    ids = list(
        study_worklist(filters=WorklistFilters(), user=user).filter(waiting).values_list("pk", flat=True)
    )
    try:
        at = ids.index(study_id)
    except ValueError:
        return None, None
    return (ids[at - 1] if at > 0 else None), (ids[at + 1] if at + 1 < len(ids) else None)


def age_label(birth_date: dt.date | None, on: dt.date | None) -> str:
    """The patient's age on the study date (today without one): '34 y', '8 mo' under two
    years; '—' without a birth date."""
    if birth_date is None:
        return "—"
    day = on or timezone.localdate()
    months = (day.year - birth_date.year) * 12 + day.month - birth_date.month - (day.day < birth_date.day)
    if months < 0:
        return "—"
    return f"{months} mo" if months < 24 else f"{months // 12} y"


def waiting_label(study: Study, *, now: dt.datetime | None = None) -> str:
    """'3 h 12 min' since the study arrived; '—' once read (reviewed or reported)."""
    if study.status in READ_STATES:
        return "—"
    minutes = max(0, int(((now or timezone.now()) - study.created_at).total_seconds() // 60))
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} d {hours % 24} h"


def study_detail(*, study_id: int) -> Study:
    """One study with its images and their analyses, strongest first (findings, then applicable
    results, then not-applicable, experimental and placeholder ones, then unfinished). Raises
    DoesNotExist."""
    return (
        Study.objects.select_related("patient", "assigned_radiologist")
        .prefetch_related(
            Prefetch(
                "images",
                queryset=Image.objects.order_by("created_at", "id").prefetch_related(
                    Prefetch("analyses", queryset=results_ranked(Analysis.objects.all())),
                    "annotations",
                ),
            )
        )
        .get(pk=study_id)
    )
