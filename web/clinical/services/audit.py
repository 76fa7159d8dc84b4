"""Audit rows: who did what to which patient's data (append-only)."""

from __future__ import annotations

import logging
from typing import Any

from web.clinical.models import AuditEvent, Patient, Study

log = logging.getLogger(__name__)


def audit_record(**fields: Any) -> AuditEvent:
    """Save one audit row; the arguments are audit_event's."""
    event = audit_event(**fields)
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
