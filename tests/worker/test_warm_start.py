"""Warm start: a fresh worker loads the active models as soon as its pool process exists, so
the first upload after start-up does not wait for TensorFlow and the model (it took 41 s)."""

from __future__ import annotations

import pytest

from tests.web.fixtures import celery_worker, dicom_bytes, service_env, upload, wait_for
from web.clinical.models import Analysis

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_a_fresh_worker_warms_the_active_models_before_the_first_job_comes(
    api, private_redis, broker_switch, tiny_registry, service_logs
) -> None:
    url = f"redis://127.0.0.1:{private_redis[1]}/0"
    broker_switch(url)
    worker = celery_worker(
        "warm", service_env(CELERY_BROKER_URL=url, RADTRIAGE_REGISTRY=str(tiny_registry)), service_logs
    ).start(ready_text="ready.", timeout=90)
    try:
        # The process-init hook returned at once (the worker said ready); the models load after.
        wait_for(lambda: "Models warm in process" in worker.log(), timeout=120, what="the models to warm")
        log_before = worker.log()
        assert "Loaded model pneumonia-tiny-test" in log_before
        assert "Warmed pneumonia (pneumonia-tiny-test)" in log_before
        assert "Warmed cardiomegaly" in log_before  # its artifact is missing: the flagged placeholder

        response = upload(api, dicom_bytes(patient_id="MRN-WARM", seed=5), conditions="pneumonia")
        analysis_id = response.json()["image"]["analyses"][0]["id"]
        done = wait_for(
            lambda: Analysis.objects.filter(pk=analysis_id, state="succeeded").first(),
            timeout=60,
            what="the first analysis",
        )
        assert done.model_id == "pneumonia-tiny-test" and not done.is_placeholder
        # The job found the model loaded: nothing was loaded again after warming.
        assert worker.log().count("Loaded model pneumonia-tiny-test") == 1
    finally:
        worker.stop()


def test_make_run_says_ready_only_once_the_workers_models_are_warm(
    transactional_db, private_redis, tiny_registry, service_logs
) -> None:
    """`manage.py wait_ready` (the Procfile's `ready` line) waits for the warm marks."""
    import subprocess
    import sys

    env = service_env(
        CELERY_BROKER_URL=f"redis://127.0.0.1:{private_redis[1]}/0", RADTRIAGE_REGISTRY=str(tiny_registry)
    )
    ready = subprocess.Popen(
        [sys.executable, "manage.py", "wait_ready", "--once", "--processes", "1", "--timeout", "170"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    worker = celery_worker("ready", env, service_logs).start(ready_text="ready.", timeout=90)
    try:
        said, _ = ready.communicate(timeout=180)
        warm_by_then = "Models warm in process" in worker.log()
    finally:
        worker.stop()
        ready.kill()
    assert ready.returncode == 0, said
    assert "RadTriage is ready: models warm in" in said
    assert warm_by_then  # the worker had finished warming when "ready" was said


def test_wait_ready_gives_up_with_a_clear_message_when_no_worker_warms(
    transactional_db, private_redis
) -> None:
    import subprocess
    import sys

    env = service_env(CELERY_BROKER_URL=f"redis://127.0.0.1:{private_redis[1]}/0")
    done = subprocess.run(
        [sys.executable, "manage.py", "wait_ready", "--once", "--timeout", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "Not ready after 2 s" in done.stderr
