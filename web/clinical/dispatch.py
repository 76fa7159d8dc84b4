"""Jobs sent to the workers, by name: the one place the web side talks to Celery.

The web side never imports worker/ (the tasks import the services: a circle). It sends a
job by its task name with ids only (never pixels or patient data), and worker/tasks.py
registers each task under the same constant. The names keep their historical values
("worker.tasks.<name>"): messages already queued and the beat schedule stay valid.

The Celery app is built on first use, not at import (web.settings imports the names for the
beat schedule), from the settings' CELERY_* names; the worker runs the same app with its
tasks added, so web and workers cannot disagree on the broker or the queues.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

TASK_ANALYZE = "worker.tasks.analyze"  # one analysis id (a person is waiting)
TASK_ANALYZE_BATCH = "worker.tasks.analyze_batch"  # a list of analysis ids (bulk, DICOM)
TASK_RENDER_REPORT = "worker.tasks.render_report"  # a report version id
TASK_PACS_SEND = "worker.tasks.pacs_send"  # a DicomSend id
# Beat's periodic jobs (no arguments), on the maintenance queue.
TASK_SWEEP_STUCK = "worker.tasks.sweep_stuck_analyses"
TASK_RECOVER_ORPHANS = "worker.tasks.requeue_orphaned_analyses"
TASK_REMOVE_ABANDONED_UPLOADS = "worker.tasks.remove_abandoned_uploads"
TASK_REMOVE_ORPHAN_FILES = "worker.tasks.remove_orphan_files"
TASK_START_OVERNIGHT_BATCHES = "worker.tasks.start_overnight_batches"
TASK_MONITORING_CHECK = "worker.tasks.monitoring_check"

# The jobs whose first argument is an analysis id, or a list of them.
ANALYSIS_TASKS = (TASK_ANALYZE, TASK_ANALYZE_BATCH)


@functools.cache
def celery_app() -> Celery:
    """The process's Celery app (the web's producer, the worker's consumer)."""
    from celery import Celery

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "web.settings")
    app = Celery("radtriage")
    app.config_from_object("django.conf:settings", namespace="CELERY")
    return app


def job_send(name: str, *, args: Sequence[Any], queue: str) -> None:
    """Send one job (ids only). Raises when the broker cannot take it: the caller decides
    what recovers it (the row stays queued and a recovery sweep sends it again)."""
    celery_app().send_task(name, args=list(args), queue=queue)
