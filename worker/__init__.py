"""Celery workers for RadTriage: `celery -A worker worker -Q interactive,maintenance,batch,reports`
(settings.WORKER_QUEUES: the order the worker serves them in)."""

from worker.celery import app

__all__ = ["app"]
