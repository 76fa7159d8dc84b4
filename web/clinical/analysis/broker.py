"""What the broker (Redis) holds, for the orphan sweep: which analyses have a job waiting or
in a worker's hands, and which workers are alive (a heartbeat key each job refreshes).

The database stays the truth: these only tell the sweep which queued or running rows have
lost their job, so that they are sent again within a minute instead of the sweeper's 15.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import redis
from django.conf import settings

log = logging.getLogger(__name__)

# kombu's Redis transport: a queue with priorities is a list per step, named queue + SEP + step.
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (0, 3, 6, 9)


def broker_client() -> redis.Redis:
    return redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=5, socket_connect_timeout=5)


def _key(name: str) -> str:
    return f"{settings.RADTRIAGE_NAMESPACE}.{name}"


def _job_analysis_ids(raw: bytes | str) -> list[int]:
    """The analysis ids an `analyze`/`analyze_batch` message carries ([] for any other)."""
    try:
        message = json.loads(raw)
        if isinstance(message, list):  # the unacked hash holds [message, exchange, routing key]
            message = message[0]
        task = message.get("headers", {}).get("task", "")
        if task not in ("worker.tasks.analyze", "worker.tasks.analyze_batch"):
            return []
        body: Any = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        first = args[0]
        return [int(i) for i in first] if isinstance(first, list) else [int(first)]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return []


def broker_analysis_ids(*, queues: Iterable[str]) -> set[int]:
    """Every analysis id with a job in these queues or delivered to a worker and not yet
    acknowledged (running, prefetched, or waiting out a retry's countdown)."""
    client = broker_client()
    ids: set[int] = set()
    with client.pipeline(transaction=False) as pipe:
        for queue in queues:
            for step in _PRIORITY_STEPS:
                pipe.lrange(_key(queue if step == 0 else f"{queue}{_PRIORITY_SEP}{step}"), 0, -1)
        pipe.hvals(_key("unacked"))
        for batch in pipe.execute():
            for raw in batch:
                ids.update(_job_analysis_ids(raw))
    return ids


def broker_uptime() -> float:
    """Seconds since the broker started (a restart forgets every queue and heartbeat)."""
    info: dict[str, Any] = broker_client().info("server")  # type: ignore[assignment]
    return float(info["uptime_in_seconds"])


def _alive_key(worker: str) -> str:
    return _key(f"worker-alive.{worker}")


def workers_alive(workers: Iterable[str]) -> set[str]:
    names = sorted(set(workers))
    if not names:
        return set()
    values: list[Any] = broker_client().mget([_alive_key(n) for n in names])  # type: ignore[assignment]
    return {name for name, value in zip(names, values, strict=True) if value is not None}


@contextlib.contextmanager
def worker_heartbeat(worker: str, *, ttl: float | None = None) -> Iterator[None]:
    """While the block runs, a key says `worker` (host:pid, as in Analysis.worker) is alive;
    it expires `ttl` seconds after the process stops refreshing it (killed, frozen)."""
    ttl = float(ttl if ttl is not None else settings.ORPHAN_AFTER)
    stop = threading.Event()
    key = _alive_key(worker)

    def beat() -> None:
        client = broker_client()
        while True:
            try:
                client.set(key, "1", px=int(ttl * 1000))
            except redis.RedisError:
                log.warning("Could not refresh the heartbeat of %s", worker, exc_info=True)
            if stop.wait(ttl / 3):
                break
        with contextlib.suppress(redis.RedisError):
            client.delete(key)

    thread = threading.Thread(target=beat, name="radtriage-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=2)
