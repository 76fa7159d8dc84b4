"""Drift alerts: raised (and audited) once per model (id, checksum) and reason, kept while they
hold, cleared (and audited) when they no longer do, when the model is replaced (another
checksum, another model for the condition) or when its reference changes. Judged over the last
RADTRIAGE_MONITORING_WINDOW_DAYS by Celery beat (RADTRIAGE_MONITORING_CHECK_INTERVAL) and
whenever the monitoring page or API computes that same window."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.utils import timezone

from web.access import Capability, can
from web.clinical.audit.records import audit_record
from web.clinical.models import DriftAlert
from web.clinical.monitoring.summary import ModelMonitoring, monitoring_models

ACTION_RAISED = "monitoring.drift_alert"
ACTION_CLEARED = "monitoring.drift_cleared"


def monitoring_check(
    *, now: dt.datetime | None = None, models: list[ModelMonitoring] | None = None
) -> list[DriftAlert]:
    """Bring the alerts in line with the window's numbers (`models`: already computed for the
    last RADTRIAGE_MONITORING_WINDOW_DAYS). Returns the alerts open afterwards."""
    if models is None:
        models = monitoring_models(days=settings.RADTRIAGE_MONITORING_WINDOW_DAYS, now=now)
    by_model = {(m.model_id, m.model_sha256): m for m in models}
    standing = {
        (m.model_id, m.model_sha256, r["reason"]): (m, r)
        for m in models
        if not m.superseded
        for r in m.drift_reasons
    }
    with transaction.atomic():
        for alert in DriftAlert.objects.select_for_update().filter(cleared_at__isnull=True):
            model = by_model.get((alert.model_id, alert.model_sha256))
            why = _clear_why(alert, model, standing)
            if why:
                _clear(alert, why)
        held = set(
            DriftAlert.objects.filter(cleared_at__isnull=True).values_list(
                "model_id", "model_sha256", "reason"
            )
        )
        for key, (model, reason) in standing.items():
            if key not in held:
                _raise(model, reason)
    return list(DriftAlert.objects.filter(cleared_at__isnull=True))


def _clear_why(
    alert: DriftAlert,
    model: ModelMonitoring | None,
    standing: dict[tuple[str, str, str], tuple[ModelMonitoring, dict[str, str]]],
) -> str:
    if model is None:
        return "the model has no results in the window"
    if model.superseded:
        return "the model changed (another checksum or another model now answers)"
    if model.reference.key != alert.reference:
        return f"the reference changed to {model.reference.label}"
    if (alert.model_id, alert.model_sha256, alert.reason) not in standing:
        return "back within what the reference expects"
    return ""


def _clear(alert: DriftAlert, why: str) -> None:
    alert.cleared_at = timezone.now()
    alert.cleared_why = why[:200]
    alert.save(update_fields=["cleared_at", "cleared_why"])
    audit_record(
        actor=None,
        action=ACTION_CLEARED,
        obj=alert,
        detail={
            "model_id": alert.model_id,
            "model_sha256": alert.model_sha256,
            "condition": alert.condition,
            "reason": alert.reason,
            "why": why,
        },
    )


def _raise(model: ModelMonitoring, reason: dict[str, str]) -> None:
    detail: dict[str, Any] = {
        "text": reason["text"],
        "flag_rate": model.flag_rate,
        "expected_flag_rate": model.reference.flag_rate,
        "psi": model.psi,
        "results": model.scored,
    }
    try:
        with transaction.atomic():
            alert = DriftAlert.objects.create(
                model_id=model.model_id,
                model_sha256=model.model_sha256,
                condition=model.condition,
                reason=reason["reason"],
                reference=model.reference.key,
                detail=detail,
            )
    except IntegrityError:  # raised meanwhile by another check
        return
    audit_record(
        actor=None,
        action=ACTION_RAISED,
        obj=alert,
        detail={
            "model_id": model.model_id,
            "model_sha256": model.model_sha256,
            "condition": model.condition,
            "reason": reason["reason"],
            "reference": model.reference.label,
            **detail,
        },
    )


def open_alerts() -> list[DriftAlert]:
    return list(DriftAlert.objects.filter(cleared_at__isnull=True).order_by("model_id", "reason"))


def alerts_context(request: HttpRequest) -> dict[str, Any]:
    """Context processor: the open drift alerts, for admins only (the base page's banner)."""
    user = getattr(request, "user", None)
    if user is None or not can(user, Capability.MANAGE):
        return {}
    return {"drift_alerts": open_alerts()}
