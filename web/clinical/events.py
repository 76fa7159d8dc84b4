"""Live events: analysis queued/started/finished/failed, pushed over the channel layer.

Payloads are built inside the transaction (so they describe exactly what is being committed)
and sent only after commit, to the study's group and to the worklist group. Sending is best
effort: a Redis hiccup must never fail an upload or a job (the database is the truth and the
pages re-read it on reconnect).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

from channels.layers import get_channel_layer
from django.db import transaction

from web.clinical.models import Analysis, Annotation

log = logging.getLogger(__name__)

WORKLIST_GROUP = "worklist"
EVENT_TYPE = "analysis.event"  # -> LiveConsumer.analysis_event
# Several events for one group in one channel message -> LiveConsumer.analysis_events. Passing
# a message through the channel layer costs the receiving web process ~1 ms of CPU, so a
# burst (a bulk upload's "queued", a batch job's "started"/"finished") travels as one.
EVENTS_TYPE = "analysis.events"
ANNOTATION_TYPE = "annotation.event"  # -> LiveConsumer.annotation_event (study group only)
BATCH_EVENT_TYPE = "batch.progress"  # -> LiveConsumer.batch_progress


def study_group(study_id: int) -> str:
    return f"study-{study_id}"


def batch_group(batch_id: int) -> str:
    return f"batch-{batch_id}"


ACCESS_ENDED_TYPE = "access.ended"  # -> LiveConsumer.access_ended


def user_group(user_id: int) -> str:
    """Every live page of one account (closed when its access ends)."""
    return f"user-{user_id}"


def access_ended_publish(*, user_ids: set[int]) -> None:
    """These accounts' access ended (web.access.user_access_end): after commit, their open
    pages' websockets close, so a live page stops showing patient data."""
    message = {"type": ACCESS_ENDED_TYPE, "event": "access_ended"}
    groups = [user_group(pk) for pk in sorted(user_ids)]
    transaction.on_commit(lambda: _send_now(groups, message))


def batch_event_publish(*, batch_id: int, progress: dict[str, Any]) -> None:
    """A batch's progress (done / total, failed, ETA), for its page, after commit. Sent by the
    same in-order publisher as the analysis events, so a page sees them in order."""
    message = {"type": BATCH_EVENT_TYPE, "progress": progress}
    transaction.on_commit(lambda: _publisher.send([batch_group(batch_id)], message))


def analysis_payload(analysis: Analysis) -> dict[str, Any]:
    """What a page needs to redraw one analysis without asking the server again: the API's
    own representation (one shape of a result everywhere), plus where it belongs."""
    from web.api.serializers import AnalysisSerializer

    return {
        **AnalysisSerializer(analysis).data,
        "image_id": analysis.image_id,
        "study_status": analysis.image.study.status,
    }


STUDY_EVENT_TYPE = "study.event"  # -> LiveConsumer.study_event


def study_event_publish(*, study: Any, event: str) -> None:
    """A person changed a study (claimed, released, took it over, moved its state, signed its
    report): after commit, tell the worklist and the study's page. Rare and small, so sent
    directly, best effort."""
    message = {
        "type": STUDY_EVENT_TYPE,
        "event": event,
        "study": {
            "id": study.pk,
            "status": study.status,
            "assigned_radiologist": study.assigned_radiologist.get_username()
            if study.assigned_radiologist_id
            else None,
        },
    }
    groups = [study_group(study.pk), WORKLIST_GROUP]
    transaction.on_commit(lambda: _send_now(groups, message))


def studies_event_publish(*, studies: Sequence[dict[str, Any]]) -> None:
    """Many studies moved by the AI at once ({"id", "status", "assigned_radiologist"} each; the
    event is the new status): after commit, through the in-order publisher, so a batch's
    burst travels as one channel message per group, as its analysis events do."""
    for study in studies:
        message = {"type": STUDY_EVENT_TYPE, "event": study["status"], "study": dict(study)}
        groups = [study_group(study["id"]), WORKLIST_GROUP]
        transaction.on_commit(partial(_publisher.send, groups, message))


def _send_now(groups: list[str], message: dict[str, Any]) -> None:
    from asgiref.sync import async_to_sync

    layer = get_channel_layer()
    if layer is None:
        return
    try:
        for group in groups:
            async_to_sync(layer.group_send)(group, message)
    except Exception:  # noqa: BLE001 - see module docstring: events never fail an action
        log.warning("Could not publish study event %s", message["event"], exc_info=True)


def analysis_payloads(analyses: Sequence[Analysis]) -> list[dict[str, Any]]:
    """analysis_payload() for many analyses at once. One serializer with many=True builds its
    fields once: per analysis that step cost ~1.5 ms, most of an event's price in a batch."""
    from web.api.serializers import AnalysisSerializer

    if not analyses:
        return []
    data = AnalysisSerializer(list(analyses), many=True).data
    return [
        {**row, "image_id": analysis.image_id, "study_status": analysis.image.study.status}
        for analysis, row in zip(analyses, data, strict=True)
    ]


def analysis_event_publish(*, analysis: Analysis, event: str) -> None:
    """Queue `event` for sending after the current transaction commits."""
    analyses_event_publish(analyses=[analysis], event=event)


def analyses_event_publish(*, analyses: Sequence[Analysis], event: str) -> None:
    """Queue `event` for each of `analyses` (in order), to be sent after the current
    transaction commits."""
    for analysis, payload in zip(analyses, analysis_payloads(analyses), strict=True):
        message = {"type": EVENT_TYPE, "event": event, "analysis": payload}
        groups = [study_group(analysis.image.study_id), WORKLIST_GROUP]
        transaction.on_commit(partial(_publisher.send, groups, message))


def annotation_payload(annotation: Annotation) -> dict[str, Any]:
    from web.api.serializers import AnnotationSerializer

    return AnnotationSerializer(annotation).data


def annotation_event_publish(*, annotation: Annotation, event: str) -> None:
    """Queue a created/updated/deleted annotation for the study's open pages, after commit."""
    message = {"type": ANNOTATION_TYPE, "event": event, "annotation": annotation_payload(annotation)}
    groups = [study_group(annotation.image.study_id)]
    transaction.on_commit(lambda: _publisher.send(groups, message))


class _Publisher:
    """Sends events from one long-lived event loop thread per process, in order.

    A job must not wait for Redis round trips to tell browsers about itself, and creating an
    event loop + Redis connection per event (async_to_sync) costs milliseconds per job.
    Created lazily and again after fork, so Celery's pool processes each get their own.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[list[str], dict[str, Any]] | None] | None = None
        self._idle = threading.Event()
        self._pending: collections.deque[tuple[list[str], dict[str, Any]]] = collections.deque()
        self._wake_scheduled = False

    def send(self, groups: list[str], message: dict[str, Any]) -> None:
        loop, queue = self._ensure()
        with self._lock:
            self._idle.clear()
            self._pending.append((groups, message))
            if self._wake_scheduled:
                return  # the loop has not run since the last wake-up: it will take this too
            self._wake_scheduled = True
        # One wake-up of the event loop thread per burst, not per event: a bulk upload or a
        # batch job sends dozens in a row, and each wake-up costs the sender a GIL hand-off.
        loop.call_soon_threadsafe(self._take_pending, queue)

    def _take_pending(self, queue: asyncio.Queue) -> None:
        with self._lock:
            self._wake_scheduled = False
            while self._pending:
                queue.put_nowait(self._pending.popleft())

    def flush(self, timeout: float = 2.0) -> bool:
        """Wait until every event sent so far has gone out (tests, process exit)."""
        if self._pid != os.getpid() or self._loop is None:
            return True
        return self._idle.wait(timeout)

    def _ensure(self) -> tuple[asyncio.AbstractEventLoop, asyncio.Queue]:
        with self._lock:
            if self._pid != os.getpid() or self._loop is None:
                self._pending.clear()  # a forked child inherits its parent's, never its loop
                self._wake_scheduled = False
                loop = asyncio.new_event_loop()
                queue: asyncio.Queue = asyncio.Queue()
                ready = threading.Event()
                thread = threading.Thread(
                    target=self._run, args=(loop, queue, ready), name="radtriage-events", daemon=True
                )
                thread.start()
                ready.wait()
                self._loop, self._queue, self._pid = loop, queue, os.getpid()
            return self._loop, self._queue  # type: ignore[return-value]

    def _run(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        ready.set()
        loop.run_until_complete(self._drain(queue))

    async def _drain(self, queue: asyncio.Queue) -> None:
        layer = get_channel_layer()
        while True:
            burst = [await queue.get()]
            while not queue.empty():
                burst.append(queue.get_nowait())
            try:
                if layer is not None:
                    for group, messages in _by_group(burst).items():
                        await layer.group_send(group, _combined(messages))
            except Exception:  # noqa: BLE001 - see module docstring: events never fail a job
                first = burst[0][1]
                log.warning(
                    "Could not publish %d event(s), the first a %s event for %s",
                    len(burst),
                    first["type"],
                    (first.get("analysis") or first.get("annotation") or {}).get("id"),
                    exc_info=True,
                )
            with self._lock:
                if queue.empty() and not self._pending:
                    self._idle.set()


def _by_group(burst: list[tuple[list[str], dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Each group's messages, in the order they were sent."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for groups, message in burst:
        for group in groups:
            grouped.setdefault(group, []).append(message)
    return grouped


def _combined(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """One channel message for a burst; each event keeps its own "type", which the consumer's
    analysis_events dispatches on (analysis, annotation, study and batch events may mix)."""
    if len(messages) == 1:
        return messages[0]
    return {"type": EVENTS_TYPE, "events": messages}


_publisher = _Publisher()
atexit.register(_publisher.flush)


def events_flush(timeout: float = 2.0) -> bool:
    return _publisher.flush(timeout)


def _private_layer() -> Any:
    """A new instance of the configured channel layer (None when there is none)."""
    from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers

    try:
        return channel_layers.make_backend(DEFAULT_CHANNEL_LAYER)
    except Exception:  # noqa: BLE001 - no layer configured: the listener polls
        return None


class GroupListener:
    """Blocking wake-ups from a group's messages, for a process outside the ASGI server (the
    import_batch command waiting for its batch): wait() returns True as soon as a message
    arrives, False after `timeout`. Only a wake-up: the caller reads the database, the truth,
    and still wakes on its own after the timeout (no channel layer, Redis down: it polls)."""

    def __init__(self, group: str) -> None:
        self.group = group
        # A layer of its own, used only on this listener's loop: the process's shared layer
        # keeps per-loop state (a receive lock), and a receive cut short by the timeout on a
        # private loop would leave that state to trip every other loop of the process.
        self._layer = _private_layer()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._channel = ""

    def __enter__(self) -> GroupListener:
        if self._layer is None:
            return self
        self._loop = asyncio.new_event_loop()
        try:
            self._channel = self._loop.run_until_complete(self._layer.new_channel())
            self._loop.run_until_complete(self._layer.group_add(self.group, self._channel))
        except Exception:  # noqa: BLE001 - a wake-up is an optimisation; polling still works
            log.warning("Could not listen to %s; polling instead", self.group, exc_info=True)
            self._close()
        return self

    def wait(self, timeout: float) -> bool:
        if self._loop is None or self._layer is None:
            time.sleep(timeout)
            return False
        try:
            self._loop.run_until_complete(asyncio.wait_for(self._layer.receive(self._channel), timeout))
            return True
        except TimeoutError:
            return False
        except Exception:  # noqa: BLE001 - see wait(): fall back to polling
            log.warning("Listening to %s failed; polling instead", self.group, exc_info=True)
            self._close()
            time.sleep(timeout)
            return False

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._layer is not None:
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(self._layer.group_discard(self.group, self._channel))
            close_pools = getattr(self._layer, "close_pools", None)
            if close_pools is not None:
                with contextlib.suppress(Exception):
                    self._loop.run_until_complete(close_pools())
        self._close()

    def _close(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None
