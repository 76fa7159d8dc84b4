"""The orphan sweep against a real Redis broker and PostgreSQL, without a worker: it sends
again exactly the jobs whose message or worker is gone, and leaves the others alone."""

from __future__ import annotations

import datetime as dt

import pytest
import redis
from django.utils import timezone

from tests.web.fixtures import dicom_bytes, upload, wait_for
from web.clinical.analysis.recovery import (
    analyses_requeue_orphans,
    broker_analysis_ids,
    broker_uptime,
    job_message_ids,
    worker_heartbeat,
)
from web.clinical.dispatch import ANALYSIS_TASKS
from web.clinical.models import Analysis

pytestmark = [pytest.mark.django_db(transaction=True)]


def test_the_orphan_sweep_resends_only_the_jobs_whose_message_or_worker_is_gone(
    api, private_redis, broker_switch, settings
) -> None:
    """Four analyses waiting for over a minute: queued with its message in Redis (left), queued
    with its message lost (sent again), running on a worker whose heartbeat is alive (left),
    running on a worker that stopped beating (sent again). What the user notices: the two lost
    ones go back to "queued" with a fresh job, the others are not run twice."""
    url = f"redis://127.0.0.1:{private_redis[1]}/0"
    broker_switch(url)
    settings.CELERY_BROKER_URL = url
    ids = []
    for i in range(4):
        response = upload(api, dicom_bytes(patient_id=f"MRN-ORPHAN-{i}", seed=i), conditions="pneumonia")
        assert response.status_code == 201, response.content
        ids.append(response.json()["image"]["analyses"][0]["id"])
    kept_queued, lost_queued, live_running, dead_running = ids
    assert broker_analysis_ids(queues=["interactive", "batch"]) == set(ids)

    client = redis.Redis.from_url(url)
    queue = f"{settings.RADTRIAGE_NAMESPACE}.interactive"
    for raw in client.lrange(queue, 0, -1):  # Redis restarted, web died before sending...
        if job_message_ids(raw, tasks=ANALYSIS_TASKS) == [lost_queued]:
            client.lrem(queue, 1, raw)
    assert broker_analysis_ids(queues=["interactive"]) == set(ids) - {lost_queued}

    long_ago = timezone.now() - dt.timedelta(minutes=2)
    Analysis.objects.filter(pk__in=[kept_queued, lost_queued]).update(enqueued_at=long_ago)
    Analysis.objects.filter(pk=live_running).update(state="running", started_at=long_ago, worker="w1@host:11")
    Analysis.objects.filter(pk=dead_running).update(state="running", started_at=long_ago, worker="w2@host:22")
    wait_for(lambda: broker_uptime() > 1, timeout=5, what="the broker to be up for over a second")

    with worker_heartbeat("w1@host:11", ttl=30):
        wait_for(lambda: client.exists(f"{settings.RADTRIAGE_NAMESPACE}.worker-alive.w1@host:11"), timeout=5)
        resent = analyses_requeue_orphans(orphan_after=1)
        again = analyses_requeue_orphans(orphan_after=60)

    assert sorted(resent) == sorted([lost_queued, dead_running])
    assert again == []  # just sent: younger than the orphan age
    rows = {a.pk: a for a in Analysis.objects.filter(pk__in=ids)}
    assert [rows[i].state for i in ids] == ["queued", "queued", "running", "queued"]
    assert [rows[i].requeues for i in ids] == [0, 1, 0, 1]
    assert {lost_queued, dead_running} <= broker_analysis_ids(queues=["interactive"])
