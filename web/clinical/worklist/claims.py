"""Who reads which study, and how far the reading is: claim, release, open, mark reviewed.

Each action is audited once and announced on the worklist's live group after commit. Statuses:
received -> analysing -> ai_complete ("ready for review") are the AI's (services.studies);
in_review is set when the radiologist who claimed a study opens it; reported when that
radiologist marks it reviewed (until reports exist).
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from web.clinical.audit.records import audit_record
from web.clinical.events import study_event_publish
from web.clinical.models import Analysis, Study


class WorklistActionRefused(Exception):
    """The action cannot be done now; `str()` says why, `status_code` is the HTTP answer."""

    def __init__(self, message: str, *, status_code: int = 409) -> None:
        super().__init__(message)
        self.status_code = status_code


def _locked(study_id: int) -> Study:
    try:
        return Study.objects.select_for_update().select_related("patient").get(pk=study_id)
    except Study.DoesNotExist:
        raise WorklistActionRefused(f"No study with id {study_id}.", status_code=404) from None


def _assignee_name(study: Study) -> str:
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


def study_claim(*, study_id: int, user: Any, ip_address: str | None = None) -> Study:
    """Assign the study to `user`. Refused (409) when another radiologist holds it or it is
    reported. Claiming one's own study again changes nothing."""
    with transaction.atomic():
        study = _locked(study_id)
        if study.assigned_radiologist_id == user.pk:
            return study
        if study.assigned_radiologist_id is not None:
            raise WorklistActionRefused(
                f"Already claimed by {_assignee_name(study)}: only they can release it."
            )
        if study.status == Study.Status.REPORTED:
            raise WorklistActionRefused("This study is already reported.")
        study.assigned_radiologist, study.claimed_at = user, timezone.now()
        study.save(update_fields=["assigned_radiologist", "claimed_at", "updated_at"])
        _audit(study, actor=user, action="study.claim", ip_address=ip_address)
        study_event_publish(study=study, event="claimed")
    return study


def study_release(*, study_id: int, user: Any, ip_address: str | None = None) -> Study:
    """Give the study back to the worklist. Only its assignee may (409 otherwise). A study in
    review goes back to the status the AI left it in."""
    with transaction.atomic():
        study = _locked(study_id)
        if study.assigned_radiologist_id != user.pk:
            who = _assignee_name(study)
            raise WorklistActionRefused(
                f"Claimed by {who}: only they can release it." if who else "Nobody has claimed this study."
            )
        study.assigned_radiologist, study.claimed_at = None, None
        if study.status == Study.Status.IN_REVIEW:
            study.status = _ai_status(study)
        study.save(update_fields=["assigned_radiologist", "claimed_at", "status", "updated_at"])
        _audit(study, actor=user, action="study.release", ip_address=ip_address)
        study_event_publish(study=study, event="released")
    return study


def study_mark_reviewed(*, study_id: int, user: Any, ip_address: str | None = None) -> Study:
    """The assignee marks the study reviewed: status reported (until reports exist)."""
    with transaction.atomic():
        study = _locked(study_id)
        if study.assigned_radiologist_id != user.pk:
            raise WorklistActionRefused("Claim the study first: only its assignee can mark it reviewed.")
        if study.status == Study.Status.REPORTED:
            return study
        study.status, study.reviewed_at, study.reviewed_by = Study.Status.REPORTED, timezone.now(), user
        study.save(update_fields=["status", "reviewed_at", "reviewed_by", "updated_at"])
        _audit(study, actor=user, action="study.review", ip_address=ip_address)
        study_event_publish(study=study, event="reviewed")
    return study


def study_open(*, study: Study, user: Any) -> bool:
    """The study page was opened: a study its assignee opens goes to in_review. Returns
    whether it changed (the page view's own audit row records it, so it is not audited twice)."""
    if study.assigned_radiologist_id != user.pk or study.status in (
        Study.Status.IN_REVIEW,
        Study.Status.REPORTED,
    ):
        return False
    with transaction.atomic():
        changed = Study.objects.filter(
            pk=study.pk, assigned_radiologist=user, status__in=_before_review()
        ).update(status=Study.Status.IN_REVIEW, updated_at=timezone.now())
        if changed:
            study.status = Study.Status.IN_REVIEW
            study_event_publish(study=study, event="in_review")
    return bool(changed)


def _before_review() -> list[str]:
    return [Study.Status.RECEIVED, Study.Status.ANALYSING, Study.Status.AI_COMPLETE]


def _ai_status(study: Study) -> str:
    analyses = Analysis.objects.filter(image__study=study)
    if analyses.filter(state__in=[Analysis.State.QUEUED, Analysis.State.RUNNING]).exists():
        return Study.Status.ANALYSING
    return Study.Status.AI_COMPLETE if analyses.exists() else Study.Status.RECEIVED
