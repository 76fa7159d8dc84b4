"""The Celery application of the workers: the web's own app (web.clinical.dispatch, configured
from web.settings' CELERY_* names: broker, queues, limits, the beat schedule) with the tasks
added, so web and workers cannot disagree. Process hooks for the pool live here."""

from __future__ import annotations

import logging
import os
import threading

from celery.signals import worker_init, worker_process_init
from celery.utils.log import current_process_index

from web.clinical.dispatch import celery_app

log = logging.getLogger(__name__)

app = celery_app()
app.conf.include = ["worker.tasks"]


@worker_process_init.connect
def pin_one_gpu_per_process(**_: object) -> None:
    """With RADTRIAGE_ONE_GPU_PER_PROCESS=1 and `--concurrency <number of GPUs>`, pool process
    i sees only GPU i. Runs after fork and before TensorFlow is first imported (lazily, by the
    first job), which is the only moment CUDA_VISIBLE_DEVICES can still take effect."""
    if os.environ.get("RADTRIAGE_ONE_GPU_PER_PROCESS", "").lower() in {"1", "true", "yes"}:
        gpus = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
        index = current_process_index(base=0) or 0
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)] if gpus else str(index)


@worker_init.connect
def limit_cpu_threads(sender: object = None, **_: object) -> None:
    """TensorFlow's CPU thread pool defaults to every core, and its threads spin while they
    wait: on a machine shared with the web server and the database, a small model burns
    ~60% more CPU per image that way (14.4 vs 8.8 ms at batch 1 on 2 cores, and slower).
    Default: half the cores shared among the pool processes; RADTRIAGE_TF_THREADS overrides.
    Runs in the worker's parent before it forks its pool and before TensorFlow is imported
    (lazily, by the first job): the pool processes inherit the variables."""
    processes = getattr(sender, "concurrency", None) or 1
    threads = os.environ.get("RADTRIAGE_TF_THREADS") or str(
        cpu_threads_per_process(cores=os.cpu_count() or 1, processes=int(processes))
    )
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", threads)
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")


@worker_process_init.connect
def limit_blas_threads(**_: object) -> None:
    """numpy's BLAS (OpenBLAS) also starts a thread per core and spins it between calls: in a
    pool process that doubles the CPU a batch job costs (12 vs 6 ms per image, bench/batch.py
    on 2 cores) without making it any faster, and takes the other core from the other pool
    process and the import. Each pool process (after fork: numpy is already loaded, so its
    environment variables come too late) gets as many BLAS threads as TensorFlow."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=int(os.environ.get("TF_NUM_INTRAOP_THREADS") or 1), user_api="blas")
    except Exception:  # noqa: BLE001 - slower jobs, never a pool process that cannot start
        log.warning("Could not limit numpy's BLAS threads", exc_info=True)


def cpu_threads_per_process(*, cores: int, processes: int) -> int:
    return max(1, cores // (2 * max(1, processes)))


@worker_process_init.connect
def warm_models_in_the_background(**_: object) -> None:
    """Without this, the first job of a fresh pool process pays for importing TensorFlow and
    loading its model (41 s for the first result after start-up). Each pool process warms the
    active models as soon as it exists, in a thread: Celery kills a process whose init hook
    runs past worker_proc_alive_timeout (4 s), and a job that arrives meanwhile waits on the
    ModelManager's per-model lock instead of loading a second copy. After fork, so TensorFlow
    is never imported in the parent. RADTRIAGE_WARM_MODELS=0 turns it off."""
    if os.environ.get("RADTRIAGE_WARM_MODELS", "1").lower() in {"0", "false", "no"}:
        return
    threading.Thread(target=warm_models, name="radtriage-warm", daemon=True).start()


def warm_models() -> None:
    from django.conf import settings

    from core.analysis import warm_active_models
    from core.model_manager import get_manager
    from web.clinical.registry.shared import registry_pull

    try:
        registry_pull()
        took = warm_active_models(get_manager(settings.RADTRIAGE_REGISTRY))
    except Exception:  # noqa: BLE001 - an unreadable registry: the first job says why
        log.warning("Could not warm the models", exc_info=True)
        return
    log.info(
        "Models warm in process %s: %s", os.getpid(), ", ".join(f"{c} {s:.1f} s" for c, s in took.items())
    )
    try:
        from web.engine.readiness import mark_warm

        mark_warm()
    except Exception:  # noqa: BLE001 - only `make run`'s "ready" line waits on it
        log.warning("Could not mark this process warm in Redis", exc_info=True)
