"""Worker process settings that decide how much CPU a job costs, and the order in which a
worker serves its queues."""

from __future__ import annotations

import json
import re

import redis
import yaml
from django.conf import settings

from tests.web.fixtures import REPO
from worker.celery import cpu_threads_per_process, limit_cpu_threads


def test_tensorflow_gets_half_the_cores_shared_among_pool_processes() -> None:
    assert cpu_threads_per_process(cores=2, processes=1) == 1
    assert cpu_threads_per_process(cores=16, processes=1) == 8
    assert cpu_threads_per_process(cores=16, processes=4) == 2
    assert cpu_threads_per_process(cores=4, processes=8) == 1  # never zero


def test_the_thread_limit_follows_the_pool_size_and_can_be_overridden(monkeypatch) -> None:
    import os
    from types import SimpleNamespace

    for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "RADTRIAGE_TF_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    limit_cpu_threads(sender=SimpleNamespace(concurrency=4))  # the worker, before it forks
    assert os.environ["TF_NUM_INTRAOP_THREADS"] == "2"
    assert os.environ["TF_NUM_INTEROP_THREADS"] == "1"

    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS")
    monkeypatch.setenv("RADTRIAGE_TF_THREADS", "3")
    limit_cpu_threads(sender=SimpleNamespace(concurrency=4))
    assert os.environ["TF_NUM_INTRAOP_THREADS"] == "3"


def test_a_pool_process_runs_numpy_on_as_many_threads_as_tensorflow(monkeypatch) -> None:
    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits

    from worker.celery import limit_blas_threads

    np.ones((64, 64)) @ np.ones((64, 64))  # BLAS loaded, as in a pool process after fork
    with threadpool_limits(limits=2, user_api="blas"):  # restored after the test
        monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "1")
        limit_blas_threads()  # worker_process_init, in the pool process
        blas = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
        assert blas and set(blas) == {1}


# --------------------------------------------------------------------------- queues


def _queue_lists(text: str) -> list[list[str]]:
    """The -Q list of every `celery ... worker` command line in `text`."""
    return [m.split(",") for m in re.findall(r"celery -A worker worker\b.*?-Q ([\w,]+)", text)]


def _deployments() -> dict[str, list[list[str]]]:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    commands = [str(service.get("command", "")) for service in compose["services"].values()]
    return {
        "Procfile (make run)": _queue_lists((REPO / "Procfile").read_text()),
        "docker-compose.yml": [q for command in commands for q in _queue_lists(command)],
    }


def test_every_deployment_serves_every_queue_and_report_renders_after_every_analysis() -> None:
    """A worker takes jobs from its queues in the order of its -Q list (priority strategy): a
    report render (1-3 s) must never be taken while an analysis waits."""
    assert settings.CELERY_BROKER_TRANSPORT_OPTIONS["queue_order_strategy"] == "priority"
    assert settings.WORKER_QUEUES[-1] == settings.QUEUE_REPORTS
    analysis_queues = set(settings.ANALYSIS_QUEUES.values())
    for deployment, workers in _deployments().items():
        assert workers, deployment
        served = {queue for queues in workers for queue in queues}
        assert served == set(settings.WORKER_QUEUES), deployment
        for queues in workers:
            assert queues == [q for q in settings.WORKER_QUEUES if q in queues], (deployment, queues)
            if settings.QUEUE_REPORTS in queues:
                assert not analysis_queues & set(queues[queues.index(settings.QUEUE_REPORTS) :]), queues


def test_a_report_render_is_sent_to_the_reports_queue(private_redis, broker_switch) -> None:
    from web.clinical.dispatch import TASK_RENDER_REPORT
    from web.clinical.reporting.reports import report_render_request

    url = f"redis://127.0.0.1:{private_redis[1]}/0"
    broker_switch(url)
    report_render_request(report_id=41)

    client = redis.Redis.from_url(url)
    waiting = {
        queue: [
            json.loads(raw)["headers"]["task"]
            for raw in client.lrange(f"{settings.RADTRIAGE_NAMESPACE}.{queue}", 0, -1)
        ]
        for queue in settings.WORKER_QUEUES
    }
    assert waiting[settings.QUEUE_REPORTS] == [TASK_RENDER_REPORT]
    assert not [task for queue, tasks in waiting.items() if queue != settings.QUEUE_REPORTS for task in tasks]
