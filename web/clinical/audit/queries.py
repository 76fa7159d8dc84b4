"""queries: read-only queries."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from django.db.models import (
    Q,
    QuerySet,
)

from web.clinical.models import AuditEvent

# The audit log's filters, as query parameters (the admin's list and its CSV export share them).
AUDIT_FILTERS = ("user", "action", "patient", "study", "since", "until")


class BadAuditFilter(ValueError):
    pass


def _audit_date(name: str, raw: str) -> dt.date:
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise BadAuditFilter(f"`{name}` must be a date like 2026-12-01, not {raw!r}.") from None


def audit_event_list(
    *,
    user: str = "",
    action: str = "",
    patient: str = "",
    study: str = "",
    since: str = "",
    until: str = "",
) -> QuerySet[Any]:
    """Audit rows, newest first, filtered by: username, action, patient ID (MRN), study (its id,
    accession number or StudyInstanceUID), and a date range (inclusive, the site's TIME_ZONE).
    A badly formed date raises BadAuditFilter."""
    events = AuditEvent.objects.select_related("patient", "study").order_by("-at", "-id")
    return audit_event_filter(
        events, user=user, action=action, patient=patient, study=study, since=since, until=until
    )


def audit_event_filter(
    events: QuerySet[Any],
    *,
    user: str = "",
    action: str = "",
    patient: str = "",
    study: str = "",
    since: str = "",
    until: str = "",
) -> QuerySet[Any]:
    """audit_event_list's filters, on any query of audit rows (the admin's list)."""
    if user := user.strip():
        events = events.filter(actor_label__iexact=user)
    if action := action.strip():
        events = events.filter(action=action)
    if patient := patient.strip():
        events = events.filter(patient__patient_id=patient)
    if study := study.strip():
        match = Q(study__accession_number=study) | Q(study__study_instance_uid=study)
        if study.isdigit():
            match |= Q(study_id=int(study))
        events = events.filter(match)
    if since := since.strip():
        events = events.filter(at__date__gte=_audit_date("since", since))
    if until := until.strip():
        events = events.filter(at__date__lte=_audit_date("until", until))
    return events


def audit_filters_from(params: Mapping[str, str]) -> dict[str, str]:
    return {name: params.get(name, "") for name in AUDIT_FILTERS}
