"""Audit rows: who did what to which patient's data (append-only)."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from django.conf import settings
from django.utils import timezone

from web.clinical.models import AuditEvent, Patient, Study

log = logging.getLogger(__name__)


def audit_record(**fields: Any) -> AuditEvent:
    """Save one audit row; the arguments are audit_event's."""
    event = audit_event(**fields)
    event.save()
    return event


def audit_record_read(**fields: Any) -> AuditEvent:
    """A read of patient data: one row per user action. Opening a study page reads the study
    twice (the page, then its script's API refresh) and shows a heat map twice (the page's
    layer, then the script's redrawn one); a repeat of the same read by the same person within
    RADTRIAGE_AUDIT_REPEAT_SECONDS is that same action, so it adds no row."""
    event = audit_event(**fields)
    window = dt.timedelta(seconds=settings.RADTRIAGE_AUDIT_REPEAT_SECONDS)
    if event.actor is not None and window:
        earlier = (
            AuditEvent.objects.filter(
                actor=event.actor,
                action=event.action,
                object_type=event.object_type,
                object_id=event.object_id,
                detail=event.detail,
                at__gte=timezone.now() - window,
            )
            .order_by("-at")
            .first()
        )
        if earlier is not None:
            return earlier
    event.save()
    return event


def audit_event(
    *,
    actor: Any,
    action: str,
    patient: Patient | None = None,
    study: Study | None = None,
    obj: Any = None,
    detail: dict[str, Any] | None = None,
    ip_address: str | None = None,
) -> AuditEvent:
    """An unsaved audit row (for bulk_create); audit_record saves one."""
    is_user = actor is not None and getattr(actor, "is_authenticated", False)
    return AuditEvent(
        actor=actor if is_user else None,
        actor_label=actor.get_username() if is_user else "system",
        action=action,
        patient=patient,
        study=study,
        object_type=type(obj).__name__.lower() if obj is not None else "",
        object_id=str(obj.pk) if obj is not None else "",
        detail=detail or {},
        ip_address=ip_address,
    )
