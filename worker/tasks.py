"""Thin Celery tasks: take an id, call one service. No pixels or models travel the broker.

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
from django.db import InterfaceError, OperationalError

from web.clinical.services import (
    analyses_requeue_stuck,
    analysis_fail,
    analysis_mark_retrying,
    analysis_run,
)
from worker.celery import app

log = logging.getLogger(__name__)

# Worth another try: the database or Redis blinked, the disk was busy, the job ran too long.
# Everything else (a corrupt image, an unknown condition) fails once, inside analysis_run.
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


@app.task(
    bind=True,
    name="worker.tasks.analyze",
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=settings.ANALYSIS_SOFT_TIME_LIMIT,
    time_limit=settings.ANALYSIS_TIME_LIMIT,
    max_retries=settings.ANALYSIS_MAX_RETRIES,
    ignore_result=True,
)
def analyze(self, analysis_id: int) -> None:
    try:
        analysis_run(analysis_id=analysis_id, worker=f"{self.request.hostname}:{os.getpid()}")
    except TRANSIENT_ERRORS as exc:
        message = f"{type(exc).__name__}: {exc}".strip()
        if self.request.retries >= self.max_retries:
            analysis_fail(analysis_id=analysis_id, message=(
                f"The analysis failed {self.request.retries + 1} times on a temporary problem "
                f"and was abandoned ({message}). Re-run it when the system is healthy."))
            return
        log.warning("Analysis %s: transient error, retrying: %s", analysis_id, message)
        try:
            analysis_mark_retrying(analysis_id=analysis_id, message=message)
        except Exception:  # noqa: BLE001 - the database may be the thing that is down
            log.warning("Could not mark analysis %s as retrying", analysis_id, exc_info=True)
        raise self.retry(exc=exc, countdown=retry_countdown(self.request.retries)) from None


@app.task(name="worker.tasks.sweep_stuck_analyses", ignore_result=True,
          soft_time_limit=60, time_limit=90)
def sweep_stuck_analyses() -> list[int]:
    return analyses_requeue_stuck(queued_after=settings.STUCK_QUEUED_AFTER,
                                  running_after=settings.STUCK_RUNNING_AFTER)
