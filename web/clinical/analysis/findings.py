"""The finding rule: what counts as an AI finding, which results count at all, which result a
study shows, and which result is current. Written once, as data; the query expressions and the
in-memory checks are derived from it, so the flag, the worklist, the filters, the reports, the
SR and the counts cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from django.db.models import Case, Exists, IntegerField, OuterRef, Q, QuerySet, Value, When

from web.clinical.models import Analysis, Image

# field -> the values a result must hold there. None among them: "not checked" is accepted.
# A result counts (may be reported as a reading of the image) when it finished, came from a
# real model that is not experimental, and the image is not outside the model's population
# (applicable None: analysed before the check existed).
APPLICABLE_RULE: Mapping[str, tuple[Any, ...]] = {
    "state": (Analysis.State.SUCCEEDED,),
    "is_placeholder": (False,),
    "experimental": (False,),
    "applicable": (True, None),
}
# A finding: an applicable result whose label at the model's threshold is positive.
FINDING_RULE: Mapping[str, tuple[Any, ...]] = {**APPLICABLE_RULE, "positive": (True,)}


def _rule_q(rule: Mapping[str, tuple[Any, ...]], prefix: str) -> Q:
    q = Q()
    for field, allowed in rule.items():
        values = [v for v in allowed if v is not None]
        name = f"{prefix}{field}"
        term = Q(**{name: values[0]}) if len(values) == 1 else Q(**{f"{name}__in": values})
        if None in allowed:
            term |= Q(**{f"{name}__isnull": True})
        q &= term
    return q


def _rule_holds(rule: Mapping[str, tuple[Any, ...]], analysis: Any) -> bool:
    # `is` for booleans and None, so 1 == True or 0 == False never slip through.
    return all(any(_same(getattr(analysis, field), v) for v in allowed) for field, allowed in rule.items())


def _same(value: Any, wanted: Any) -> bool:
    if wanted is None or isinstance(wanted, bool):
        return value is wanted
    return bool(value == wanted)


def finding_q(prefix: str = "") -> Q:
    """The finding rule as a query expression on Analysis (`prefix`: e.g. "analyses__")."""
    return _rule_q(FINDING_RULE, prefix)


def applicable_q(prefix: str = "") -> Q:
    """An applicable (reportable) result as a query expression on Analysis."""
    return _rule_q(APPLICABLE_RULE, prefix)


def analysis_is_finding(analysis: Any) -> bool:
    """The finding rule for one object in memory (an Analysis or anything with its fields)."""
    return _rule_holds(FINDING_RULE, analysis)


def analysis_is_applicable(analysis: Any) -> bool:
    return _rule_holds(APPLICABLE_RULE, analysis)


def findings() -> QuerySet[Analysis]:
    return Analysis.objects.filter(finding_q())


def studies_with_finding(study_ids: Iterable[int], *, condition: str | None = None) -> set[int]:
    """The studies among these with a finding (for `condition` when given). Starts from the
    studies' images (a few index probes), never from the analysis table, which grows forever."""
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


def study_has_finding_q(*, condition: str | None = None, study_ref: str = "pk") -> Exists:
    """Exists(...) on Study: the study has a finding (for `condition` when given)."""
    matching = findings().filter(image__study=OuterRef(study_ref))
    if condition:
        matching = matching.filter(condition=condition)
    return Exists(matching)


def urgency_of_condition() -> Case:
    """core.conditions.CONDITION_URGENCY as a query expression on Analysis.condition."""
    from core.conditions import CONDITION_URGENCY

    return Case(
        *[When(Q(condition=code), then=Value(level)) for code, level in CONDITION_URGENCY.items()],
        default=Value(0),
        output_field=IntegerField(),
    )
