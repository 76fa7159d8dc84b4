"""Celery workers for RadTriage: `celery -A worker worker -Q interactive,batch,maintenance`."""

from worker.celery import app

__all__ = ["app"]
