"""The study's state machine: the one place a study's status changes.

    received ─┬─► analysing ◄─► scheduled        the AI's states: what its analyses are doing
              │       │    ╲    ╱   │            (scheduled: an overnight batch's analyses wait
              │       ▼     ╲  ╱    ▼             for the night window)
              └────► ai_complete ◄──┘
    any AI state ──► in_review      its holder opened it or began a report
    in_review ──► the AI's state    its holder released it
    any AI state or in_review ──► reviewed   its holder read it; no report here (it may
                                             live in the RIS)
    anything but reported ──► reported        ONLY by signing a report (a signed report
                                             must exist: checked here and by the database)

`TRANSITIONS` is that table; `study_transition` moves one study (a person's action) and
`studies_follow_ai` many (the AI's progress, after analyses are queued, start or end). Every
move is audited (action "study.status", from, to, why) and announced to the worklist and the
study's page after commit. A move the table does not allow raises StudyTransitionRefused,
whose message says why (the API answers 409).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from typing import Any

from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from web.clinical.analysis.findings import studies_findings
from web.clinical.audit.records import audit_event, audit_record
from web.clinical.events import studies_event_publish, study_event_publish
from web.clinical.models import Analysis, AuditEvent, Batch, Image, Report, Study

log = logging.getLogger(__name__)

S = Study.Status
AI_STATES = frozenset({S.RECEIVED, S.ANALYSING, S.SCHEDULED, S.AI_COMPLETE})
# Read by a radiologist: the study no longer waits on the worklist.
READ_STATES = frozenset({S.REVIEWED, S.REPORTED})

_AI_MOVES = {
    S.ANALYSING: "analyses were queued or started",
    S.SCHEDULED: "its analyses wait for the night window",
    S.AI_COMPLETE: "its analyses ended",
}
_SIGNED = "a report was signed"

# (from, to) -> what makes that move. Anything not listed is refused.
TRANSITIONS: dict[tuple[str, str], str] = {
    **{(a, b): why for a in AI_STATES for b, why in _AI_MOVES.items() if a != b},
    **{(a, S.IN_REVIEW): "its holder opened it or began a report" for a in AI_STATES},
    **{(S.IN_REVIEW, a): "its holder released it: back to the AI's state" for a in AI_STATES},
    **{(a, S.REVIEWED): "its holder marked it reviewed" for a in AI_STATES | {S.IN_REVIEW}},
    **{(a, S.REPORTED): _SIGNED for a in AI_STATES | {S.IN_REVIEW, S.REVIEWED}},
}


class StudyActionRefused(Exception):
    """A study action that cannot be done now; `str()` says why, `status_code` is the HTTP
    answer (409: the study's state or its holder does not allow it)."""

    def __init__(self, message: str, *, status_code: int = 409) -> None:
        super().__init__(message)
        self.status_code = status_code


class StudyTransitionRefused(StudyActionRefused):
    """The state machine does not allow this move (or, to reported, no signed report exists)."""

    def __init__(self, message: str, *, current: str, wanted: str) -> None:
        super().__init__(message)
        self.current, self.wanted = current, wanted


def _label(status: str) -> str:
    return str(S(status).label)


def _refusal(current: str, wanted: str) -> str:
    """Why the table has no (current, wanted) move, in the words a radiologist reads."""
    head = f"This study is {_label(current).lower()}; it cannot become {_label(wanted).lower()}"
    if current == S.REPORTED:
        why = "a signed report is final (a correction is an addendum, and the study stays reported)"
    elif current == S.REVIEWED:
        why = "it has been read; only signing a report moves it on (to reported)"
    elif wanted == S.RECEIVED:
        why = "only releasing a study in review with no analyses makes it received again"
    elif wanted == S.IN_REVIEW:
        why = "only a study waiting to be read goes into review"
    else:
        why = "the AI's states follow its analyses only until a radiologist takes the study up"
    return f"{head}: {why}."


def transition_check(current: str, wanted: str) -> str:
    """What makes the move (from TRANSITIONS); raises StudyTransitionRefused if there is none."""
    why = TRANSITIONS.get((current, wanted))
    if why is None:
        raise StudyTransitionRefused(_refusal(current, wanted), current=current, wanted=wanted)
    return why


def study_has_signed_report(study_id: int) -> bool:
    return Report.objects.filter(study_id=study_id, state=Report.State.SIGNED).exists()


def study_transition(
    *,
    study: Study,
    to: str,
    actor: Any,
    reason: str = "",
    ip_address: str | None = None,
    event: str | None = None,
) -> bool:
    """Move `study` to `to`: checked against TRANSITIONS (and, to reported, against its signed
    reports), audited, announced after commit as `event` (default: the new status). Returns
    False, doing nothing, when the study is already there. Reads the status under a row lock,
    so a move decided on a stale object is checked against what is stored."""
    with transaction.atomic():
        current = Study.objects.select_for_update().values_list("status", flat=True).get(pk=study.pk)
        if current == to:
            study.status = current
            return False
        why = transition_check(current, to)
        if to == S.REPORTED and not study_has_signed_report(study.pk):
            raise StudyTransitionRefused(
                "This study has no signed report: a study becomes reported only when its report is signed.",
                current=current,
                wanted=to,
            )
        study.status, study.updated_at = to, timezone.now()
        Study.objects.filter(pk=study.pk).update(status=to, updated_at=study.updated_at)
        audit_record(
            actor=actor,
            action="study.status",
            patient=study.patient,
            study=study,
            obj=study,
            ip_address=ip_address,
            detail={"from": current, "to": to, "why": reason or why},
        )
        study_event_publish(study=study, event=event or to)
    return True


# --------------------------------------------------------------------------- the AI's states


def studies_ai_state(study_ids: Iterable[int]) -> dict[int, str]:
    """What each study's analyses say: analysing while one is queued or running now,
    scheduled while the only ones left wait for an overnight batch's window, ai_complete once
    all ended, received when it has none. At most three queries for any number of studies."""
    left = set(study_ids)
    states: dict[int, str] = {}
    night = Batch.objects.filter(
        pk=OuterRef("batch_id"), schedule=Batch.Schedule.OVERNIGHT, state=Batch.State.WAITING
    )
    pending = Q(state__in=[Analysis.State.QUEUED, Analysis.State.RUNNING])
    steps: list[tuple[str, Q]] = [
        (S.ANALYSING, pending & Q(~Exists(night))),
        (S.SCHEDULED, pending & Q(Exists(night))),
        (S.AI_COMPLETE, Q()),
    ]
    for status, matching in steps:
        if not left:
            break
        found = _studies_with(left, matching)
        states.update(dict.fromkeys(found, status))
        left -= found
    states.update(dict.fromkeys(left, S.RECEIVED))
    return states


def studies_follow_ai(*, studies: Iterable[Study] = (), study_ids: Iterable[int] = ()) -> list[int]:
    """Move the studies still in an AI state to what their analyses say (the AI's bulk form of
    study_transition; actor "system"). A study a radiologist has taken up (in review, reviewed,
    reported) keeps its state. One audit INSERT and one burst of events for all of them; the
    objects passed in are updated too (several may stand for one study). Returns the ids moved."""
    objects = list(studies)
    ids = {s.pk for s in objects} | set(study_ids)
    if not ids:
        return []
    with transaction.atomic():
        # Locked, so a radiologist's move committed meanwhile is not overwritten.
        stored = dict(
            Study.objects.select_for_update()
            .filter(pk__in=ids, status__in=AI_STATES)
            .order_by("pk")
            .values_list("pk", "status")
        )
        wanted = studies_ai_state(stored)
        # Never back to received on its own: a study whose analyses are gone keeps its state.
        moves = {pk: (stored[pk], to) for pk, to in wanted.items() if to not in (stored[pk], S.RECEIVED)}
        for current, to in set(moves.values()):
            transition_check(current, to)
        _studies_move(moves, objects)
    return sorted(moves)


def _studies_move(moves: dict[int, tuple[str, str]], objects: list[Study]) -> None:
    if not moves:
        return
    now = timezone.now()
    for to in {to for _, to in moves.values()}:
        Study.objects.filter(pk__in=[pk for pk, (_, t) in moves.items() if t == to]).update(
            status=to, updated_at=now
        )
    for study in objects:
        if study.pk in moves:
            study.status, study.updated_at = moves[study.pk][1], now
    rows = list(
        Study.objects.filter(pk__in=list(moves))
        .order_by("pk")
        .values("pk", "patient_id", "assigned_radiologist__username")
    )
    AuditEvent.objects.bulk_create(
        [
            _ai_audit(row["pk"], row["patient_id"], *moves[row["pk"]])
            for row in rows  # one per study, in id order
        ]
    )
    studies_event_publish(
        studies=[
            {
                "id": r["pk"],
                "status": moves[r["pk"]][1],
                "assigned_radiologist": r["assigned_radiologist__username"],
            }
            for r in rows
        ]
    )


def _ai_audit(study_id: int, patient_id: int, current: str, to: str) -> AuditEvent:
    event = audit_event(
        actor=None, action="study.status", detail={"from": current, "to": to, "why": TRANSITIONS[current, to]}
    )
    event.study_id, event.patient_id = study_id, patient_id
    event.object_type, event.object_id = "study", str(study_id)
    return event


def studies_mark_analysing(studies: list[Study]) -> None:
    """Analyses were just queued for these studies."""
    studies_follow_ai(studies=studies)


def study_refresh_status(study: Study) -> None:
    studies_refresh(studies=[study])


# What the finding rule keeps on each study (analysis.findings.studies_findings): the flag,
# the urgency and probability of its strongest finding, which the worklist sorts on, and the
# conditions of its findings, which the condition filter reads.
FINDING_COLUMNS = ("ai_flagged", "finding_urgency", "finding_probability", "finding_conditions")


def studies_refresh(*, studies: list[Study]) -> None:
    """After analyses end: each study's AI flag and the strongest finding's urgency and
    probability (the finding rule), and its AI state, in one transaction.

    The objects passed in are updated too (several may stand for one study), so events built
    from them say what the database says.
    """
    by_pk = {s.pk: s for s in studies}
    if not by_pk:
        return
    with transaction.atomic():
        now = timezone.now()
        top = studies_findings(list(by_pk))  # the finding rule (analysis.findings)
        wanted = {pk: (pk in top, *top.get(pk, (0, 0.0, ""))) for pk in by_pk}
        _studies_set(studies, FINDING_COLUMNS, wanted, now=now)
        studies_follow_ai(studies=studies)


def _studies_with(study_ids: Iterable[int], matching: Q) -> set[int]:
    """The studies among these with an analysis matching. Starts from the studies' images (a
    few index probes), never from the analysis table, which grows forever."""
    analyses = Analysis.objects.filter(matching, image=OuterRef("pk"))
    return set(
        Image.objects.filter(study_id__in=list(study_ids))
        .filter(Exists(analyses))
        .order_by()
        .values_list("study_id", flat=True)
        .distinct()
    )


def _studies_set(
    studies: list[Study], fields: tuple[str, ...], wanted: dict[int, tuple[Any, ...]], *, now: dt.datetime
) -> None:
    """Write `fields` where they differ from `wanted` (one UPDATE per distinct set of values)."""
    current = {s.pk: tuple(getattr(s, f) for f in fields) for s in studies}
    changed = {pk for pk, values in wanted.items() if current[pk] != values}
    for values in {wanted[pk] for pk in changed}:
        Study.objects.filter(pk__in=[pk for pk in changed if wanted[pk] == values]).update(
            **dict(zip(fields, values, strict=True)), updated_at=now
        )
    for study in studies:
        if study.pk in changed:
            for field, value in zip(fields, wanted[study.pk], strict=True):
                setattr(study, field, value)
            study.updated_at = now
