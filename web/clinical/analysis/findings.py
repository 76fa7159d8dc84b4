"""The finding rule: what counts as an AI finding, which results count at all, which result a
study shows, and which result of a condition is current (only current results flag a study).

Written once, as data (field -> the values a result must hold there); the query expressions
and the in-memory checks are both derived from it, so the study's flag, the worklist order and
filters, the row's strongest result, the PDF, the SR, batch summaries and verdict counts cannot
disagree. core.analysis.AnalysisOutcome.flag is the same rule on core's side of the line (a
test checks they agree on every kind of result).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from django.db.models import (
    Case,
    CharField,
    Exists,
    F,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Coalesce

from core.conditions import CONDITION_URGENCY
from web.clinical.models import Analysis, Image

Rule = Mapping[str, tuple[Any, ...]]

_DONE = (Analysis.State.SUCCEEDED,)
# A result counts (may be read as the model's answer for the image) when it finished, came from
# a real model that is not experimental, and the image is not outside the model's population
# (applicable None: analysed before the check existed).
APPLICABLE_RULE: Rule = {
    "state": _DONE,
    "is_placeholder": (False,),
    "experimental": (False,),
    "applicable": (True, None),
}
# A finding (the AI flag): an applicable result positive at the model's threshold.
FINDING_RULE: Rule = {**APPLICABLE_RULE, "positive": (True,)}
# A result that replaces the earlier readings of its condition on its image: a finished result
# of a real model in clinical use (not-applicable included: the model says the image is not
# for it). An experimental or placeholder run never takes a reading's place, so it cannot take
# a flag away or put one up.
REPLACING_RULE: Rule = {"state": _DONE, "is_placeholder": (False,), "experimental": (False,)}


@dataclass(frozen=True)
class ResultKind:
    """One kind of finished result: its key, the words the worklist row shows, its rule."""

    key: str
    label: str
    rule: Rule


# Every finished result is exactly one of these; listed strongest first: the order in which a
# study's results compete to be the one its row shows. A not-applicable, experimental or
# placeholder score is never shown while an applicable result exists.
RESULT_KINDS: tuple[ResultKind, ...] = (
    ResultKind("finding", "AI flag", FINDING_RULE),
    ResultKind("negative", "negative", {**APPLICABLE_RULE, "positive": (False, None)}),
    ResultKind(
        "experimental",
        "experimental, not a flag",
        {"state": _DONE, "is_placeholder": (False,), "experimental": (True,), "applicable": (True, None)},
    ),
    ResultKind(
        "not_applicable",
        "not applicable to this image",
        {"state": _DONE, "is_placeholder": (False,), "applicable": (False,)},
    ),
    ResultKind(
        "placeholder", "placeholder, no diagnostic value", {"state": _DONE, "is_placeholder": (True,)}
    ),
)
RESULT_LABELS: dict[str, str] = {k.key: k.label for k in RESULT_KINDS}
RESULT_KIND_KEYS: list[str] = [k.key for k in RESULT_KINDS]  # the API schema's ResultKindEnum
_STANDING = {k.key: len(RESULT_KINDS) - i for i, k in enumerate(RESULT_KINDS)}  # 0: not finished


# --------------------------------------------------------------------------- the rule, derived


def _rule_q(rule: Rule, prefix: str) -> Q:
    q = Q()
    for field, allowed in rule.items():
        values = [v for v in allowed if v is not None]
        name = f"{prefix}{field}"
        term = Q(**{name: values[0]}) if len(values) == 1 else Q(**{f"{name}__in": values})
        if None in allowed:
            term |= Q(**{f"{name}__isnull": True})
        q &= term
    return q


def _rule_holds(rule: Rule, analysis: Any) -> bool:
    return all(any(_same(getattr(analysis, field), v) for v in allowed) for field, allowed in rule.items())


def _same(value: Any, wanted: Any) -> bool:
    # `is` for booleans and None, so that 1 == True or 0 == False never slips through.
    if wanted is None or isinstance(wanted, bool):
        return value is wanted
    return bool(value == wanted)


def finding_q(prefix: str = "") -> Q:
    """The finding rule as a query expression on Analysis (`prefix`: e.g. "analyses__")."""
    return _rule_q(FINDING_RULE, prefix)


def applicable_q(prefix: str = "") -> Q:
    """An applicable result (one that counts) as a query expression on Analysis."""
    return _rule_q(APPLICABLE_RULE, prefix)


def result_kind_q(key: str, prefix: str = "") -> Q:
    """One kind of result (a RESULT_KINDS key: "finding", "negative", ...) as a query
    expression on Analysis, for counting each kind with a filtered aggregate (the kinds do not
    overlap: every finished result is exactly one of them)."""
    for kind in RESULT_KINDS:
        if kind.key == key:
            return _rule_q(kind.rule, prefix)
    raise ValueError(f"unknown result kind {key!r}")


def analysis_is_finding(analysis: Any) -> bool:
    """The finding rule for one object in memory (an Analysis, or anything with its fields)."""
    return _rule_holds(FINDING_RULE, analysis)


def analysis_is_applicable(analysis: Any) -> bool:
    return _rule_holds(APPLICABLE_RULE, analysis)


def result_kind(analysis: Any) -> str | None:
    """ "finding", "negative", "experimental", "not_applicable", "placeholder"; None until finished."""
    return next((k.key for k in RESULT_KINDS if _rule_holds(k.rule, analysis)), None)


def result_kind_expression(prefix: str = "") -> Case:
    """result_kind as a query expression (NULL until finished)."""
    return Case(
        *[When(_rule_q(k.rule, prefix), then=Value(k.key)) for k in RESULT_KINDS],
        default=None,
        output_field=CharField(),
    )


# --------------------------------------------------------------------------- which studies


def findings() -> QuerySet[Analysis]:
    """The findings that stand: current results (current_q) that are findings (finding_q)."""
    return Analysis.objects.filter(finding_q() & current_q())


def studies_with_finding(study_ids: Iterable[int], *, condition: str | None = None) -> set[int]:
    """The studies among these with a finding (for `condition` when given). Starts from the
    studies' images (a few index probes), never from the analysis table, which grows forever.

    Only current results count (current_q): a later reading by a model in clinical use
    replaces the earlier one, as in the PDF and the SR; an experimental or placeholder re-run
    replaces nothing."""
    matching = findings().filter(image=OuterRef("pk"))
    if condition:
        matching = matching.filter(condition=condition)
    return set(
        Image.objects.filter(study_id__in=list(study_ids))
        .filter(Exists(matching))
        .order_by()
        .values_list("study_id", flat=True)
        .distinct()
    )


def studies_top_finding(study_ids: Iterable[int]) -> dict[int, tuple[int, float]]:
    """Each study among these with a finding -> (the urgency of its condition, its probability)
    for its strongest finding (results_ranked's first): what Study.ai_flagged,
    Study.finding_urgency and Study.finding_probability hold, so the worklist sorts on columns.
    Studies without a finding are left out. One query."""
    return {
        pk: (urgency, probability) for pk, (urgency, probability, _) in studies_findings(study_ids).items()
    }


def studies_findings(study_ids: Iterable[int]) -> dict[int, tuple[int, float, str]]:
    """studies_top_finding, and the conditions of all the study's findings as
    Study.finding_conditions holds them (finding_conditions_text). One query."""
    ranked = results_ranked(findings().filter(image__study_id__in=list(study_ids)))
    top: dict[int, tuple[int, float]] = {}
    conditions: dict[int, set[str]] = {}
    rows = ranked.values_list("image__study_id", "result_urgency", "probability", "condition")  # type: ignore[misc]
    for study_id, urgency, probability, condition in rows:  # result_urgency: from results_ranked
        top.setdefault(study_id, (urgency, probability or 0.0))
        conditions.setdefault(study_id, set()).add(condition)
    return {pk: (*top[pk], finding_conditions_text(conditions[pk])) for pk in top}


def finding_conditions_text(conditions: Iterable[str]) -> str:
    """Study.finding_conditions for a study with findings of these conditions: ',a,b,' (sorted,
    so that a condition is found as ',code,'); '' without a finding."""
    codes = sorted(set(conditions))
    return f",{','.join(codes)}," if codes else ""


def study_finding_stored_q(condition: str) -> Q:
    """On Study: study_has_finding(condition=condition), read from the columns the finding rule
    keeps on the study (ai_flagged, finding_conditions: states.studies_refresh), so the filter
    costs no search of the results. A test checks the two agree after every change."""
    return Q(ai_flagged=True, finding_conditions__contains=f",{condition},")


def study_has_finding(*, condition: str | None = None, conditions: Iterable[str] = ()) -> Exists:
    """On Study: it has a finding (for `condition`, or one of `conditions`, when given)."""
    matching = findings().filter(image__study=OuterRef("pk"))
    if condition:
        matching = matching.filter(condition=condition)
    if conditions:
        matching = matching.filter(condition__in=list(conditions))
    return Exists(matching)


# --------------------------------------------------------------------------- strongest result


def urgency_of_condition() -> Case:
    """core.conditions.CONDITION_URGENCY as a query expression on Analysis.condition."""
    return Case(
        *[When(Q(condition=code), then=Value(level)) for code, level in CONDITION_URGENCY.items()],
        default=Value(0),
        output_field=IntegerField(),
    )


def _standing_expression() -> Case:
    return Case(
        *[When(_rule_q(k.rule, ""), then=Value(_STANDING[k.key])) for k in RESULT_KINDS],
        default=Value(0),
        output_field=IntegerField(),
    )


def results_ranked(analyses: QuerySet[Analysis]) -> QuerySet[Analysis]:
    """Strongest first: a finding (the most urgent condition, then the most probable), then an
    applicable result, then experimental, not-applicable and placeholder ones, then results not
    finished; newest first among equals."""
    return analyses.annotate(
        result_standing=_standing_expression(), result_urgency=urgency_of_condition()
    ).order_by("-result_standing", "-result_urgency", F("probability").desc(nulls_last=True), "-id")


def result_rank_key(analysis: Any) -> tuple[int, int, float, int]:
    """results_ranked's order in memory (sort ascending with this key)."""
    kind = result_kind(analysis)
    probability = analysis.probability
    return (
        -_STANDING.get(kind or "", 0),
        -CONDITION_URGENCY.get(analysis.condition, 0),
        -(probability if probability is not None else float("-inf")),
        -(analysis.pk or 0),
    )


def study_strongest_result() -> Subquery:
    """On Study: the id of the result its row shows (None while nothing has finished)."""
    current = Analysis.objects.filter(image__study=OuterRef("pk")).filter(current_q())
    return Subquery(results_ranked(current).values("pk")[:1])


def strongest_of(analyses: Iterable[Analysis]) -> Analysis | None:
    """study_strongest_result in memory, over a study's analyses already loaded."""
    current = current_results(analyses)
    return current[0] if current else None


class ResultRecord(TypedDict):
    id: int
    condition: str
    probability: float | None
    threshold: float | None
    positive: bool | None
    finding: bool
    kind: str
    label: str


def result_record(analysis: Analysis) -> ResultRecord:
    """What a row shows of a finished result; the worklist page and /api/studies/ draw this.
    A placeholder's or a not-applicable result's number and label mean nothing: None."""
    kind = result_kind(analysis) or ""
    meaningless = kind in ("placeholder", "not_applicable")
    return {
        "id": analysis.pk,
        "condition": analysis.condition,
        "probability": None if meaningless else analysis.probability,
        "threshold": None if meaningless else analysis.threshold,
        "positive": None if meaningless or analysis.positive is None else bool(analysis.positive),
        "finding": kind == "finding",
        "kind": kind,
        "label": RESULT_LABELS.get(kind, ""),
    }


# --------------------------------------------------------------------------- current result

_NEVER = dt.datetime.min.replace(tzinfo=dt.UTC)


def current_q() -> Q:
    """On Analysis: it is the current result of its condition on its image. That is the last
    finished (finished_at, then id) of the results that replace (REPLACING_RULE); while none
    exists, the last finished result of any kind (an experimental or placeholder reading is
    then all there is, and shows with its warning)."""
    same = Analysis.objects.filter(image=OuterRef("image"), condition=OuterRef("condition"))
    replacing = same.filter(_rule_q(REPLACING_RULE, ""))
    is_replacing = _rule_q(REPLACING_RULE, "")
    finished = Q(state=Analysis.State.SUCCEEDED)
    latest_replacing = is_replacing & ~Exists(replacing.filter(_later_than_outer()))
    only_others = (
        ~is_replacing
        & ~Exists(replacing)
        & ~Exists(same.filter(state=Analysis.State.SUCCEEDED).filter(_later_than_outer()))
    )
    return finished & (latest_replacing | only_others)


def _later_than_outer() -> Q:
    mine = Coalesce(OuterRef("finished_at"), Value(_NEVER))
    return Q(finished_at__gt=mine) | Q(finished_at=mine, pk__gt=OuterRef("pk"))


def current_results(analyses: Iterable[Analysis]) -> list[Analysis]:
    """current_q in memory: the current result of each (image, condition) among these
    analyses, strongest first (results_ranked's order). The PDF, the SR and the row's
    strongest result all read these."""
    latest: dict[tuple[int, str], Analysis] = {}
    for analysis in analyses:
        if analysis.state != Analysis.State.SUCCEEDED:
            continue
        key = (analysis.image_id, analysis.condition)
        held = latest.get(key)
        if held is None or _current_key(analysis) > _current_key(held):
            latest[key] = analysis
    return sorted(latest.values(), key=result_rank_key)


def _current_key(analysis: Analysis) -> tuple[bool, dt.datetime, int]:
    return (_rule_holds(REPLACING_RULE, analysis), analysis.finished_at or _NEVER, analysis.pk or 0)
