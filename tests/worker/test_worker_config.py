"""Worker process settings that decide how much CPU a job costs."""

from __future__ import annotations

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
