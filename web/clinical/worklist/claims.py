"""Who holds which study: claim, release, take over, open, mark reviewed.

A study is held by at most one radiologist (Study.assigned_radiologist). Only the holder
releases it, marks it reviewed, and writes its report (web.clinical.reporting.reports); a
colleague who must go on with it takes it over, an explicit, audited action naming both
(the holder's unsigned draft goes with the study: see study_take_over). Each action is
audited once and announced on the worklist's live group after commit; the status moves only
through the state machine (web.clinical.worklist.states).
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from web.clinical.audit.records import audit_record
from web.clinical.events import study_event_publish
from web.clinical.models import Report, Study
from web.clinical.worklist.states import (
    AI_STATES,
    StudyActionRefused,
    studies_ai_state,
    study_transition,
)

# A taken-over draft's fields the audit row keeps beside its impression, when they hold text.
DRAFT_FIELDS = ("clinical_information", "findings")


class WorklistActionRefused(StudyActionRefused):
    """A claim, release, take-over or review that cannot be done now (409, or 404)."""


def study_locked(study_id: int) -> Study:
    """The study, row-locked for the rest of the transaction (404 if there is none)."""
    try:
        return Study.objects.select_for_update().select_related("patient").get(pk=study_id)
    except Study.DoesNotExist:
        raise WorklistActionRefused(f"No study with id {study_id}.", status_code=404) from None


def holder_name(study: Study) -> str:
    user = study.assigned_radiologist
    return user.get_username() if user is not None else ""


def _audit(study: Study, *, actor: Any, action: str, ip_address: str | None, **detail: Any) -> None:
    audit_record(
        actor=actor,
        action=action,
        patient=study.patient,
        study=study,
        obj=study,
        ip_address=ip_address,
        detail=detail,
    )


def _hold(study: Study, user: Any) -> None:
    study.assigned_radiologist, study.claimed_at = user, timezone.now()
    study.save(update_fields=["assigned_radiologist", "claimed_at", "updated_at"])


def study_claim(*, study_id: int, user: Any, ip_address: str | None = None) -> Study:
    """Assign the study to `user`. Refused (409) when another radiologist holds it or it is
    reported. Claiming one's own study again changes nothing."""
    with transaction.atomic():
        study = study_locked(study_id)
        if study.assigned_radiologist_id == user.pk:
            return study
        if study.assigned_radiologist_id is not None:
            raise WorklistActionRefused(
                f"Already claimed by {holder_name(study)}: only they can release it, or take it over."
            )
        if study.status == Study.Status.REPORTED:
            raise WorklistActionRefused("This study is already reported.")
        _hold(study, user)
        _audit(study, actor=user, action="study.claim", ip_address=ip_address)
        study_event_publish(study=study, event="claimed")
    return study


def study_hold_for_report(*, study: Study, user: Any, ip_address: str | None = None) -> None:
    """Writing a report needs the study: its holder goes on; an unclaimed study is claimed for
    `user` (audited as a claim); a study a colleague holds is refused, naming them. `study`
    must be locked by the caller."""
    if study.assigned_radiologist_id == user.pk:
        return
    if study.assigned_radiologist_id is not None:
        raise WorklistActionRefused(
            f"{holder_name(study)} holds this study: only they write its report. "
            "Take the study over to go on with it."
        )
    _hold(study, user)
    _audit(study, actor=user, action="study.claim", ip_address=ip_address, why="began its report")
    study_event_publish(study=study, event="claimed")


def study_release(*, study_id: int, user: Any, ip_address: str | None = None) -> Study:
    """Give the study back to the worklist. Only its holder may (409 otherwise). A study in
    review goes back to the state its analyses say; a reviewed or reported one stays so. An
    unsigned draft stays its author's (a colleague continues it by taking the study over)."""
    with transaction.atomic():
        study = study_locked(study_id)
        if study.assigned_radiologist_id != user.pk:
            who = holder_name(study)
            raise WorklistActionRefused(
                f"Claimed by {who}: only they can release it." if who else "Nobody has claimed this study."
            )
        study.assigned_radiologist, study.claimed_at = None, None
        study.save(update_fields=["assigned_radiologist", "claimed_at", "updated_at"])
        _audit(study, actor=user, action="study.release", ip_address=ip_address)
        moved = study.status == Study.Status.IN_REVIEW and study_transition(
            study=study,
            to=studies_ai_state([study.pk])[study.pk],
            actor=user,
            ip_address=ip_address,
            event="released",
        )
        if not moved:
            study_event_publish(study=study, event="released")
    return study


def study_take_over(*, study_id: int, user: Any, reason: str = "", ip_address: str | None = None) -> Study:
    """`user` takes the study over from the colleague who holds it (or from the author of its
    unsigned draft, when nobody holds it): `user` becomes its holder and the author of that
    draft, whose first author is kept on it (Report.taken_over_from). One audit row names both,
    the draft's version and the words its first author had written. Refused (409) when there
    is nothing to take over: the study is `user`'s already, or nobody else holds it or has a
    draft of it (claim it instead)."""
    with transaction.atomic():
        study = study_locked(study_id)
        draft = study.reports.select_for_update().filter(state=Report.State.DRAFT).first()
        previous = study.assigned_radiologist
        foreign_draft = draft is not None and draft.author_id != user.pk
        if study.assigned_radiologist_id == user.pk and not foreign_draft:
            raise WorklistActionRefused("You already hold this study.")
        if study.assigned_radiologist_id is None and not foreign_draft:
            raise WorklistActionRefused("Nobody holds this study: claim it instead.")
        detail: dict[str, Any] = {
            "from": previous.get_username() if previous is not None else None,
            "to": user.get_username(),
            "reason": reason,
        }
        if draft is not None and foreign_draft:
            # The words as the colleague left them: the new author may rewrite the draft, and
            # the record keeps what the first author had written.
            detail.update(
                draft_version=draft.version,
                draft_author=draft.author.get_username(),
                draft_impression=draft.impression,
                **{f"draft_{name}": getattr(draft, name) for name in DRAFT_FIELDS if getattr(draft, name)},
            )
            draft.taken_over_from = draft.taken_over_from or draft.author
            draft.author = user
            draft.save(update_fields=["author", "taken_over_from", "updated_at"])
        _hold(study, user)
        _audit(study, actor=user, action="study.take_over", ip_address=ip_address, **detail)
        study_event_publish(study=study, event="taken_over")
    return study


def study_mark_reviewed(*, study_id: int, user: Any, ip_address: str | None = None) -> Study:
    """The holder has read the study: status reviewed (read, no report here: the report may
    live in the RIS). Never reported: only signing a report does that."""
    with transaction.atomic():
        study = study_locked(study_id)
        if study.assigned_radiologist_id != user.pk:
            raise WorklistActionRefused("Claim the study first: only its holder can mark it reviewed.")
        if study.status == Study.Status.REVIEWED:
            return study
        study.reviewed_at, study.reviewed_by = timezone.now(), user
        study.save(update_fields=["reviewed_at", "reviewed_by", "updated_at"])
        study_transition(
            study=study, to=Study.Status.REVIEWED, actor=user, ip_address=ip_address, event="reviewed"
        )
    return study


def study_open(*, study: Study, user: Any, ip_address: str | None = None) -> bool:
    """The study page was opened: a study waiting to be read that its holder opens goes into
    review. Returns whether it moved."""
    if study.assigned_radiologist_id != user.pk or study.status not in AI_STATES:
        return False
    with transaction.atomic():
        locked = study_locked(study.pk)
        if locked.assigned_radiologist_id != user.pk or locked.status not in AI_STATES:
            return False
        moved = study_transition(
            study=locked, to=Study.Status.IN_REVIEW, actor=user, ip_address=ip_address, event="in_review"
        )
        study.status = locked.status
    return moved
