"""Job recovery: how a job lost to a fault still ends in exactly one stored result.

The database row is the truth; the broker (Redis) only carries the job. Five parts:

1. Enqueue after commit. A job is sent (web.clinical.dispatch, ids only) in
   `transaction.on_commit`, so a worker never sees a row that is not there. If the send
   fails, or the process dies between commit and send, the row stays queued.
2. Heartbeat. While a worker runs a job, `worker_heartbeat` refreshes a key per process
   (host:pid, as stored in Analysis.worker) that expires ORPHAN_AFTER seconds after the
   process stops refreshing it (SIGKILL, out of memory, machine gone).
3. The orphan sweep (`analyses_requeue_orphans`, every ORPHAN_SWEEP_INTERVAL): a queued row
   older than ORPHAN_AFTER whose id is in no broker queue and in no worker's hands (Redis
   restarted empty, the send failed), or a running row whose worker's heartbeat stopped, is
   set back to queued and sent again: a lost job runs again within about 45 s. It reads
   kombu's Redis layout (a list per queue and priority step, the `unacked` hash) below.
4. The stuck sweep (`analyses_requeue_stuck`, every SWEEP_INTERVAL): the backstop. Any row
   queued for STUCK_QUEUED_AFTER or running for longer than the hard time limit is sent again,
   whatever the broker says.
5. Idempotent completion. Sending a job twice is always safe: a worker claims only rows still
   queued or running, and the first stored result stands (jobs.analyses_run). A result's
   heat-map file is written before its row and never deleted once the row is committed;
   files no committed row points to are removed later by web.clinical.files.

Overnight batches waiting for their night window are left alone by both sweeps. The orphan
sweep also sends again a PACS send (DicomSend) queued for ORPHAN_AFTER with no job in the
broker (`pacs_sends_requeue_orphans`): its job was lost the same ways, and pacs_send_run
does nothing for a send already sent.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import logging
import threading
from collections.abc import Iterable, Iterator
from functools import partial
from typing import Any

import redis
from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from web.clinical.analysis.jobs import analyses_dispatch
from web.clinical.dicom.pacs_send import pacs_sends_dispatch
from web.clinical.dispatch import ANALYSIS_TASKS, TASK_PACS_SEND
from web.clinical.models import Analysis, Batch, DicomSend

log = logging.getLogger(__name__)

# kombu's Redis transport: a queue with priorities is a list per step, named queue + SEP + step.
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (0, 3, 6, 9)


# --------------------------------------------------------------------------- what the broker holds


def broker_client() -> redis.Redis:
    return redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=5, socket_connect_timeout=5)


def _key(name: str) -> str:
    return f"{settings.RADTRIAGE_NAMESPACE}.{name}"


def job_message_ids(raw: bytes | str, *, tasks: Iterable[str]) -> list[int]:
    """The ids a message of one of `tasks` carries as its first argument (an id or a list of
    ids); [] for any other message."""
    try:
        message = json.loads(raw)
        if isinstance(message, list):  # the unacked hash holds [message, exchange, routing key]
            message = message[0]
        if message.get("headers", {}).get("task", "") not in tuple(tasks):
            return []
        body: Any = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        first = json.loads(body)[0][0]
        return [int(i) for i in first] if isinstance(first, list) else [int(first)]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return []


def broker_job_ids(*, queues: Iterable[str], tasks: Iterable[str]) -> set[int]:
    """Every id with a job of `tasks` in these queues or delivered to a worker and not yet
    acknowledged (running, prefetched, or waiting out a retry's countdown)."""
    tasks = tuple(tasks)
    ids: set[int] = set()
    with broker_client().pipeline(transaction=False) as pipe:
        for queue in queues:
            for step in _PRIORITY_STEPS:
                pipe.lrange(_key(queue if step == 0 else f"{queue}{_PRIORITY_SEP}{step}"), 0, -1)
        pipe.hvals(_key("unacked"))
        for batch in pipe.execute():
            for raw in batch:
                ids.update(job_message_ids(raw, tasks=tasks))
    return ids


def broker_analysis_ids(*, queues: Iterable[str]) -> set[int]:
    """Every analysis id with a job waiting in these queues or in a worker's hands."""
    return broker_job_ids(queues=queues, tasks=ANALYSIS_TASKS)


def broker_uptime() -> float:
    """Seconds since the broker started (a restart forgets every queue and heartbeat)."""
    info: dict[str, Any] = broker_client().info("server")  # type: ignore[assignment]
    return float(info["uptime_in_seconds"])


# --------------------------------------------------------------------------- heartbeat


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


# --------------------------------------------------------------------------- the sweeps


def _not_waiting_for_the_night(rows: QuerySet[Analysis]) -> QuerySet[Analysis]:
    # An overnight batch's analyses wait for the night window, not for a sweep.
    return rows.exclude(batch_id__in=Batch.objects.filter(state=Batch.State.WAITING).values("pk"))


def analyses_requeue_orphans(*, orphan_after: float) -> list[int]:
    """The orphan sweep: send again the jobs the broker no longer has (queued, no message)
    and those whose worker stopped beating (running, no heartbeat), once older than
    `orphan_after` seconds. Safe to overlap a live job: completion is idempotent."""
    cutoff = timezone.now() - dt.timedelta(seconds=orphan_after)
    old = Q(state=Analysis.State.QUEUED, enqueued_at__lt=cutoff) | Q(
        state=Analysis.State.RUNNING, started_at__lt=cutoff
    )
    rows = list(
        _not_waiting_for_the_night(Analysis.objects.filter(old)).values_list("pk", "state", "worker")[:2000]
    )
    if not rows:
        return []  # the usual case: no need to read the broker
    queued = [pk for pk, state, _ in rows if state == Analysis.State.QUEUED]
    running = {pk: worker for pk, state, worker in rows if state == Analysis.State.RUNNING}
    in_broker = broker_analysis_ids(queues=settings.ANALYSIS_QUEUES.values()) if queued else set()
    orphans = [pk for pk in queued if pk not in in_broker]
    # Just after a broker restart every heartbeat is gone until its next refresh: wait for it.
    if running and broker_uptime() > orphan_after:
        alive = workers_alive(running.values())
        orphans.extend(pk for pk, worker in running.items() if worker not in alive)
    if not orphans:
        return []
    return _analyses_requeue(Analysis.objects.filter(old, pk__in=orphans), why="orphaned")


def analyses_requeue_stuck(*, queued_after: float, running_after: float) -> list[int]:
    """The backstop sweep: send again every job the database says is waiting or running for
    too long. A queued row older than `queued_after` lost its broker message; a running row
    older than `running_after` (> the hard time limit) lost its worker."""
    now = timezone.now()
    return _analyses_requeue(
        _not_waiting_for_the_night(
            Analysis.objects.filter(
                Q(state=Analysis.State.QUEUED, enqueued_at__lt=now - dt.timedelta(seconds=queued_after))
                | Q(state=Analysis.State.QUEUED, enqueued_at__isnull=True)
                | Q(state=Analysis.State.RUNNING, started_at__lt=now - dt.timedelta(seconds=running_after))
            )
        ),
        why="stuck",
    )


def _analyses_requeue(rows: QuerySet[Analysis], *, why: str) -> list[int]:
    """Back to queued (requeues + 1) and sent again once committed; rows another sweep or a
    worker holds locked are skipped."""
    now = timezone.now()
    requeued: list[tuple[int, str]] = []
    with transaction.atomic():
        for analysis in rows.select_for_update(skip_locked=True).order_by("enqueued_at")[:500]:
            was = analysis.state
            analysis.state = Analysis.State.QUEUED
            analysis.enqueued_at = now
            analysis.requeues += 1
            analysis.save(update_fields=["state", "enqueued_at", "requeues"])
            requeued.append((analysis.pk, analysis.queue))
            log.warning("Re-enqueueing %s analysis %s (was %s)", why, analysis.pk, was)
        by_queue: dict[str, list[int]] = {}
        for analysis_id, queue in requeued:
            by_queue.setdefault(queue, []).append(analysis_id)
        for queue, ids in by_queue.items():
            transaction.on_commit(partial(analyses_dispatch, analysis_ids=ids, queue=queue))
    return [analysis_id for analysis_id, _ in requeued]


def pacs_sends_requeue_orphans(*, orphan_after: float) -> list[int]:
    """Send again each PACS send queued (and untouched) for over `orphan_after` seconds whose
    id is in no broker queue and in no worker's hands, e.g. waiting out a retry's countdown:
    its job never reached the broker (Redis down when the results committed) or Redis lost it."""
    cutoff = timezone.now() - dt.timedelta(seconds=orphan_after)
    old = DicomSend.objects.filter(state=DicomSend.State.QUEUED, updated_at__lt=cutoff)
    candidates = list(old.values_list("pk", flat=True)[:2000])
    if not candidates:
        return []
    in_broker = broker_job_ids(queues=settings.WORKER_QUEUES, tasks=[TASK_PACS_SEND])
    lost = [pk for pk in candidates if pk not in in_broker]
    if not lost:
        return []
    with transaction.atomic():
        ids = list(old.filter(pk__in=lost).select_for_update(skip_locked=True).values_list("pk", flat=True))
        # Touched, so that the next sweep waits `orphan_after` again for this job.
        DicomSend.objects.filter(pk__in=ids).update(updated_at=timezone.now())
        transaction.on_commit(partial(pacs_sends_dispatch, send_ids=ids))
    if ids:
        log.warning("Re-sending PACS sends %s: no job for them in the broker", ids)
    return ids
