"""When is RadTriage ready? When the web answers and every worker pool process has warmed its
models: a process marks itself warm in Redis (worker/celery.py calls mark_warm), and
`manage.py wait_ready` (run by `make run`) says "ready" only then, so the first upload after
it is answered at model speed. Both sides read the key format from here."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

WARM_MARK_TTL = 24 * 3600  # seconds: a mark outlives any restart it could be confused with


def _client() -> Any:
    import redis
    from django.conf import settings

    return redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=2)


def _prefix() -> str:
    from django.conf import settings

    return f"{settings.RADTRIAGE_NAMESPACE}.warm."


def mark_warm() -> None:
    """This pool process has its models loaded (called by the worker once its models are warm)."""
    key = f"{_prefix()}{socket.gethostname()}.{os.getpid()}"
    _client().set(key, repr(time.time()), ex=WARM_MARK_TTL)


def warm_processes_since(started: float) -> int:
    """How many pool processes marked themselves warm after `started` (a time.time())."""
    client = _client()
    keys = list(client.scan_iter(match=f"{_prefix()}*", count=500))
    marks = [float(v) for v in client.mget(keys) if v is not None] if keys else []
    return sum(1 for mark in marks if mark >= started)
