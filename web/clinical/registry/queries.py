"""queries: read-only queries."""

from __future__ import annotations

from typing import Any

from django.conf import settings


def condition_models(*, condition: str) -> list[dict[str, Any]]:
    """The registry's models for a condition, for a re-run with another model. Empty when the
    registry cannot be read (the page then offers no re-run, and says nothing false)."""
    from core.errors import RadTriageError
    from core.registry import Registry
    from web.clinical.registry.shared import registry_pull

    registry_pull()
    try:
        registry = Registry.load(settings.RADTRIAGE_REGISTRY)
    except (RadTriageError, OSError, ValueError):
        return []
    active = registry.active_models.get(condition)
    return [
        {"id": e.id, "status": e.status, "active": e.id == active}
        for e in sorted(registry.models.values(), key=lambda e: e.id)
        if e.condition == condition
    ]
