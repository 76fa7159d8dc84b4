"""Jobs survive what production does to them: a worker SIGKILLed mid-job, a Redis that
restarts and forgets its queue. Each test runs its own redis-server, workers and beat."""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis
from django.test import override_settings

from tests.web.fixtures import (
    celery_beat,
    celery_worker,
    dicom_bytes,
    redis_server,
    service_env,
    upload,
    wait_for,
)
from web.clinical.models import Analysis

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

# The long sweeper is left at its 15 minutes (STUCK_*: defaults), so only the orphan sweep can
# recover these jobs in time; it runs every 2 s here and calls a job orphaned after 6 s (30 s
# and 15 s in production: a lost job runs again within 45 s).
FAST_LIMITS = {
    "RADTRIAGE_ORPHAN_AFTER": "6",
    "RADTRIAGE_ORPHAN_SWEEP_INTERVAL": "2",
}
# What the issue promises: a lost job is running again within a minute of the fault clearing.
PROMPT = 60.0


def _env(port: int, tiny_registry) -> dict[str, str]:
    url = f"redis://127.0.0.1:{port}/0"
    return service_env(
        CELERY_BROKER_URL=url, CHANNEL_REDIS_URL=url, RADTRIAGE_REGISTRY=str(tiny_registry), **FAST_LIMITS
    )


def _upload_one(api) -> Analysis:
    response = upload(api, dicom_bytes(patient_id="MRN-FAULT"), conditions="pneumonia")
    assert response.status_code == 201, response.content
    return Analysis.objects.get(pk=response.json()["image"]["analyses"][0]["id"])


def _state(analysis_id: int) -> str:
    return Analysis.objects.values_list("state", flat=True).get(pk=analysis_id)


def test_a_job_whose_worker_process_is_killed_runs_again_in_a_new_one(
    api, private_redis, broker_switch, tiny_registry, service_logs
) -> None:
    _, port = private_redis
    broker_switch(f"redis://127.0.0.1:{port}/0")
    worker = celery_worker("kill-child", _env(port, tiny_registry), service_logs)
    worker.start(ready_text="ready.", timeout=90)
    try:
        analysis = _upload_one(api)
        # The first job of a fresh worker loads TensorFlow and the model: seconds, mid-job.
        wait_for(lambda: _state(analysis.pk) == "running", timeout=60, interval=0.02, what="the job to start")
        analysis.refresh_from_db()
        pid = int(analysis.worker.rsplit(":", 1)[1])
        os.kill(pid, signal.SIGKILL)

        done = wait_for(
            lambda: Analysis.objects.filter(pk=analysis.pk, state="succeeded").first(),
            timeout=120,
            what="the job to finish in a new worker process",
        )
    finally:
        worker.stop()

    assert done.attempts == 2, worker.log()[-3000:]
    assert int(done.worker.rsplit(":", 1)[1]) != pid
    assert done.model_id == "pneumonia-tiny-test" and done.heatmap_raw


def test_a_job_survives_its_whole_worker_being_killed_and_a_new_worker_coming_back(
    api, private_redis, broker_switch, tiny_registry, service_logs
) -> None:
    """The whole worker is SIGKILLed mid-job (its message stays unacknowledged in Redis for the
    visibility timeout, 6 minutes): the job's heartbeat stops, the orphan sweep sends it again,
    and the user gets the one result within a minute of a worker being back."""
    _, port = private_redis
    broker_switch(f"redis://127.0.0.1:{port}/0")
    env = _env(port, tiny_registry)
    first = celery_worker("doomed", env, service_logs).start(ready_text="ready.", timeout=90)
    try:
        analysis = _upload_one(api)
        wait_for(lambda: _state(analysis.pk) == "running", timeout=60, interval=0.02, what="the job to start")
    finally:
        first.kill()  # SIGKILL to the main process and its pool child: nothing is acked
    assert _state(analysis.pk) == "running"

    second = celery_worker("phoenix", env, service_logs).start(ready_text="ready.", timeout=90)
    beat = celery_beat(env, service_logs).start()
    cleared = time.monotonic()  # a worker is back: the fault has cleared
    try:
        done = wait_for(
            lambda: Analysis.objects.filter(pk=analysis.pk, state="succeeded").first(),
            timeout=PROMPT,
            interval=0.2,
            what="the orphan sweep and the new worker to finish the job",
        )
    finally:
        beat.stop()
        second.stop()
    recovered = time.monotonic() - cleared

    # What the radiologist sees: the image's result, within a minute of a worker coming back.
    assert recovered < PROMPT
    print(f"killed worker: result {recovered:.1f} s after the new worker was ready")
    assert done.requeues >= 1 and done.attempts >= 2
    assert Analysis.objects.filter(image=done.image, condition="pneumonia").count() == 1
    assert "phoenix" in done.worker
    assert done.probability is not None and done.heatmap_raw


def test_a_job_lost_by_a_redis_restart_runs_within_a_minute_of_redis_being_back(
    api, private_redis, broker_switch, tiny_registry, service_logs
) -> None:
    """Redis restarts empty with a job queued: the row says queued, the broker has no message
    for it; the orphan sweep sends it again and the user gets the result within a minute."""
    server, port = private_redis
    url = f"redis://127.0.0.1:{port}/0"
    broker_switch(url)
    analysis = _upload_one(api)
    from django.conf import settings

    queue_key = f"{settings.RADTRIAGE_NAMESPACE}.interactive"
    assert redis.Redis.from_url(url).llen(queue_key) == 1
    from web.clinical.analysis.recovery import broker_analysis_ids

    with override_settings(CELERY_BROKER_URL=url):  # the sweep reads real kombu messages
        assert broker_analysis_ids(queues=["interactive", "batch"]) == {analysis.pk}

    # Redis restarts without persistence: the queued message is gone, the row is not.
    server.kill()
    restarted = redis_server(port, service_logs).start(ready_text="Ready to accept connections", timeout=20)
    try:
        assert redis.Redis.from_url(url).llen(queue_key) == 0
        env = _env(port, tiny_registry)
        worker = celery_worker("after-restart", env, service_logs).start(ready_text="ready.", timeout=90)
        beat = celery_beat(env, service_logs).start()
        cleared = time.monotonic()
        try:
            done = wait_for(
                lambda: Analysis.objects.filter(pk=analysis.pk, state="succeeded").first(),
                timeout=PROMPT,
                interval=0.2,
                what="the orphan sweep to re-enqueue the lost job",
            )
        finally:
            beat.stop()
            worker.stop()
        recovered = time.monotonic() - cleared
    finally:
        restarted.kill()

    assert recovered < PROMPT
    print(f"redis restart: result {recovered:.1f} s after redis and a worker were back")
    assert done.requeues >= 1 and done.attempts == 1
    assert Analysis.objects.filter(image=done.image, condition="pneumonia").count() == 1
    assert done.model_sha256 and done.heatmap_raw
