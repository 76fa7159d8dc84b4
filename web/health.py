"""/healthz/: for load balancers and docker health checks. No login, no patient data."""

from __future__ import annotations

import contextlib

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse

from web.clinical.media_storage import media_reachable


def healthz(request: HttpRequest) -> JsonResponse:
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - report any failure as unhealthy
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=2, socket_connect_timeout=2).ping()
        checks["broker"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["broker"] = f"error: {type(exc).__name__}"
    try:
        media_reachable()
        checks["storage"] = "ok"
    except Exception as exc:  # noqa: BLE001 - a bad endpoint setting too: unhealthy, not a 500
        checks["storage"] = f"error: {type(exc).__name__}"
    healthy = all(v == "ok" for v in checks.values())
    models = models_health()
    status = "unhealthy" if not healthy else ("ok" if all(v == "ok" for v in models.values()) else "degraded")
    # Degraded (a model answers from its placeholder) still serves: 200, and says which.
    return JsonResponse({"status": status, **checks, "models": models}, status=200 if healthy else 503)


_verified: dict[tuple[str, int, int], str] = {}


def models_health() -> dict[str, str]:
    """Each condition: "ok", or why its results come from the placeholder (no diagnostic
    value). The artifact's checksum is computed once per file version (path, mtime, size)."""
    from core.conditions import CONDITIONS
    from core.errors import RadTriageError
    from core.registry import Registry, sha256_file
    from web.clinical.registry.shared import registry_pull

    with contextlib.suppress(Exception):  # the store out of reach: this host's copy is judged
        registry_pull()
    try:
        registry = Registry.load(settings.RADTRIAGE_REGISTRY)
    except RadTriageError as exc:
        return dict.fromkeys(CONDITIONS, f"degraded: the model registry is unreadable ({exc})")
    health = {}
    for condition in CONDITIONS:
        entry = registry.active_entry(condition)
        if entry is None:
            health[condition] = "degraded: no active model (placeholder)"
            continue
        path = registry.artifact_path(entry)
        try:
            stat = path.stat()
        except OSError:
            health[condition] = f"degraded: model {entry.id} artifact missing (placeholder)"
            continue
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        if key not in _verified:
            _verified[key] = sha256_file(path)
        ok = not entry.sha256 or _verified[key] == entry.sha256
        health[condition] = (
            "ok" if ok else (f"degraded: model {entry.id} artifact fails its checksum (placeholder)")
        )
    return health
