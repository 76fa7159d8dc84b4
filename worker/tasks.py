"""Thin Celery tasks: take an id, call one service. No pixels or models travel the broker.
Each is registered under its name in web.clinical.dispatch, the names the web side sends.

The model is loaded by core.model_manager inside the service on the first job of each pool
process (after fork), and stays warm for the next jobs.
"""

from __future__ import annotations

import logging
import os
import random

import redis.exceptions
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections

from web.clinical.analysis.jobs import analyses_run, analysis_fail, analysis_mark_retrying
from web.clinical.analysis.recovery import (
    analyses_requeue_orphans,
    analyses_requeue_stuck,
    pacs_sends_requeue_orphans,
    worker_heartbeat,
)
from web.clinical.batches.batches import batches_note_progress, batches_start_due
from web.clinical.dicom.pacs_send import PacsSendError, pacs_send_fail, pacs_send_run
from web.clinical.dispatch import (
    TASK_ANALYZE,
    TASK_ANALYZE_BATCH,
    TASK_MONITORING_CHECK,
    TASK_PACS_SEND,
    TASK_RECOVER_ORPHANS,
    TASK_REMOVE_ABANDONED_UPLOADS,
    TASK_REMOVE_ORPHAN_FILES,
    TASK_RENDER_REPORT,
    TASK_START_OVERNIGHT_BATCHES,
    TASK_SWEEP_STUCK,
)
from web.clinical.files import media_remove_abandoned_uploads, media_remove_orphan_files
from web.clinical.monitoring.alerts import monitoring_check as monitoring_alerts_check
from web.clinical.reporting.reports import report_render
from worker.celery import app

log = logging.getLogger(__name__)

# Worth another try: the database or Redis blinked, the disk was busy, the job ran too long.
# Everything else (a corrupt image, an unknown condition) fails once, inside analyses_run.
TRANSIENT_ERRORS = (
    OperationalError,
    InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
    OSError,
    SoftTimeLimitExceeded,
)


def retry_countdown(retries: int) -> float:
    """Exponential backoff with jitter: ~2, 4, 8... seconds, capped at two minutes."""
    return min(2.0 * 2**retries, 120.0) * random.uniform(0.8, 1.2)


ANALYSIS_TASK_OPTIONS = {
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "soft_time_limit": settings.ANALYSIS_SOFT_TIME_LIMIT,
    "time_limit": settings.ANALYSIS_TIME_LIMIT,
    "max_retries": settings.ANALYSIS_MAX_RETRIES,
    "ignore_result": True,
}


@app.task(name=TASK_ANALYZE, **ANALYSIS_TASK_OPTIONS)
def analyze(self, analysis_id: int) -> None:
    _run_with_retries(self, [analysis_id])


@app.task(name=TASK_ANALYZE_BATCH, **ANALYSIS_TASK_OPTIONS)
def analyze_batch(self, analysis_ids: list[int]) -> None:
    """Several analyses in one job (bulk uploads): one model call per condition for all."""
    _run_with_retries(self, analysis_ids)


def _run_with_retries(task, analysis_ids: list[int]) -> None:
    worker = f"{task.request.hostname}:{os.getpid()}"
    try:
        with worker_heartbeat(worker):  # the orphan sweep re-sends the job if this stops
            analyses_run(analysis_ids=analysis_ids, worker=worker)
        _note_batch_progress(analysis_ids)
    except TRANSIENT_ERRORS as exc:
        message = f"{type(exc).__name__}: {exc}".strip()
        # A connection the database dropped (restart, pg_terminate_backend) is unusable: a
        # fresh one is opened for the bookkeeping below and for the retry.
        close_old_connections()
        if task.request.retries >= task.max_retries:
            for analysis_id in analysis_ids:  # those already finished are left alone
                analysis_fail(
                    analysis_id=analysis_id,
                    message=(
                        f"The analysis failed {task.request.retries + 1} times on a temporary "
                        f"problem and was abandoned ({message}). Re-run it when the system is "
                        "healthy."
                    ),
                )
            _note_batch_progress(analysis_ids)
            return
        log.warning("Analyses %s: transient error, retrying: %s", analysis_ids, message)
        for analysis_id in analysis_ids:
            try:
                analysis_mark_retrying(analysis_id=analysis_id, message=message)
            except Exception:  # noqa: BLE001 - the database may be the thing that is down
                log.warning("Could not mark analysis %s as retrying", analysis_id, exc_info=True)
        raise task.retry(exc=exc, countdown=retry_countdown(task.request.retries)) from None


@app.task(name=TASK_SWEEP_STUCK, ignore_result=True, soft_time_limit=60, time_limit=90)
def sweep_stuck_analyses() -> list[int]:
    return analyses_requeue_stuck(
        queued_after=settings.STUCK_QUEUED_AFTER, running_after=settings.STUCK_RUNNING_AFTER
    )


@app.task(name=TASK_RECOVER_ORPHANS, ignore_result=True, soft_time_limit=30, time_limit=45)
def requeue_orphaned_analyses() -> dict[str, list[int]]:
    """The orphan sweep: analyses and PACS sends whose job the broker lost, sent again."""
    return {
        "analyses": analyses_requeue_orphans(orphan_after=settings.ORPHAN_AFTER),
        "pacs_sends": pacs_sends_requeue_orphans(orphan_after=settings.ORPHAN_AFTER),
    }


@app.task(name=TASK_REMOVE_ABANDONED_UPLOADS, ignore_result=True, soft_time_limit=120, time_limit=150)
def remove_abandoned_uploads() -> list[str]:
    return media_remove_abandoned_uploads(older_than=settings.ABANDONED_UPLOAD_AFTER)


@app.task(name=TASK_REMOVE_ORPHAN_FILES, ignore_result=True, soft_time_limit=600, time_limit=660)
def remove_orphan_files() -> list[str]:
    return media_remove_orphan_files(older_than=settings.ORPHAN_FILE_AFTER)


@app.task(
    name=TASK_RENDER_REPORT,
    bind=True,
    acks_late=True,
    ignore_result=True,
    soft_time_limit=120,
    time_limit=150,
    max_retries=3,
)
def render_report(self, report_id: int) -> None:
    """Render a report version's PDF (idempotent: a current PDF is left as it is)."""
    try:
        report_render(report_id=report_id)
    except TRANSIENT_ERRORS as exc:
        raise self.retry(exc=exc, countdown=retry_countdown(self.request.retries)) from None


def _note_batch_progress(analysis_ids: list[int]) -> None:
    """The batch pages' progress; best effort: the results are already stored."""
    try:
        batches_note_progress(analysis_ids=analysis_ids)
    except Exception:  # noqa: BLE001 - the next job of the batch (or the beat check) catches up
        log.warning("Could not update the progress of the batch of %s", analysis_ids, exc_info=True)


@app.task(name=TASK_START_OVERNIGHT_BATCHES, ignore_result=True, soft_time_limit=60, time_limit=90)
def start_overnight_batches() -> list[int]:
    return batches_start_due()


@app.task(
    name=TASK_PACS_SEND,
    bind=True,
    acks_late=True,
    soft_time_limit=120,
    time_limit=150,
    max_retries=settings.RADTRIAGE_PACS_MAX_RETRIES,
    ignore_result=True,
)
def pacs_send(self, send_id: int) -> None:
    """C-STORE an image's AI results to the PACS; retried with backoff, then marked failed."""
    try:
        pacs_send_run(send_id=send_id)
    except (PacsSendError, *TRANSIENT_ERRORS) as exc:
        if self.request.retries >= self.max_retries:
            pacs_send_fail(
                send_id=send_id, message=f"Gave up after {self.request.retries + 1} attempts: {exc}"
            )
            return
        delay = settings.RADTRIAGE_PACS_RETRY_DELAY * 2**self.request.retries
        raise self.retry(exc=exc, countdown=delay) from None


@app.task(name=TASK_MONITORING_CHECK, ignore_result=True, soft_time_limit=120, time_limit=150)
def monitoring_check() -> int:
    """Raise and clear the models' drift alerts (web.clinical.monitoring.alerts)."""
    return len(monitoring_alerts_check())
