"""The Celery application: broker, queues, limits and the beat schedule all come from
web.settings (CELERY_* names), so web and workers cannot disagree."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "web.settings")

app = Celery("radtriage", include=["worker.tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")
