"""The Celery application: broker, queues, limits and the beat schedule all come from
web.settings (CELERY_* names), so web and workers cannot disagree."""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_init, worker_process_init
from celery.utils.log import current_process_index

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "web.settings")

app = Celery("radtriage", include=["worker.tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")


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


def cpu_threads_per_process(*, cores: int, processes: int) -> int:
    return max(1, cores // (2 * max(1, processes)))
