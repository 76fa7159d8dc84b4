"""The model registry as admins change it: switching the active model of a condition, audited.

registry.json stays the source of truth (each worker's ModelManager re-reads it when it
changes), so a switch takes effect on the next analysis without restarting anything.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from core.registry import Registry
from web.clinical.services.audit import audit_record


def registry_activate(*, model_id: str, actor: Any, ip_address: str | None = None) -> str:
    """Make `model_id` the active model of its condition; returns that condition's code."""
    registry = Registry.load(settings.RADTRIAGE_REGISTRY)
    entry = registry.entry(model_id)
    previous = registry.active_models.get(entry.condition)
    registry.activate(model_id)
    registry.save()
    audit_record(
        actor=actor,
        action="model.activate",
        ip_address=ip_address,
        detail={
            "condition": entry.condition,
            "model_id": model_id,
            "previous": previous,
            "status": entry.status,
        },
    )
    return entry.condition
