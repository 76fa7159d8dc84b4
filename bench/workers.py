"""Batch throughput with two worker processes against one, on the same machine, in the same run.

Each worker is a separate Celery worker process with one pool process, started with the
command of the compose file's `worker-cpu` service (`celery -A worker worker -Q
interactive,batch --concurrency 1 --prefetch-multiplier 1`), as a worker container, or a GPU
host with one GPU, runs it. They are started once and warmed; for each configuration of
--workers, the first k of them consume the analysis queues and the others none (Celery's
add_consumer / cancel_consumer), so no configuration pays for a start-up the other does not.

For each configuration: the same real films (--n of the --condition's test split in
../shared/data, evenly spread over the split) are imported as one overnight batch, its rows
cleared first, so nothing is sent yet; then the batch is started as beat starts an overnight
batch (batches_start_due: every analysis sent at once, in jobs of ANALYSIS_BATCH_SIZE) and
timed until its last analysis has ended. Before anything is timed, each worker runs the batch
alone once (its first jobs trace the model's graph). The configurations take turns, --rounds
times. Prints images/s for each run and the median of each configuration, its ratio to the
first, the workers' CPU per image, the share of the cores left idle and the load average. On
a scratch database, media folder and Redis namespace. Asserts nothing.

    .venv/bin/python bench/workers.py [--n 384] [--workers 1,2] [--rounds 3] [--condition pneumonia]
        [--data ../shared/data] [--registry registry.json] [--database-url postgres://...]
        [--redis-url redis://...]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from bench.batch import children, cpu_seconds, django_on_scratch, machine_cpu  # noqa: E402

QUEUES = ("interactive", "batch")  # the worker containers' -Q (docker-compose.yml)


def films_copy(*, data: Path, condition: str, n: int, folder: Path) -> int:
    """Copies n films of the condition's test split, evenly spread over it (negatives and
    positives alike), into folder. Returns how many there were to choose from."""
    with (data / "manifest.csv").open(newline="") as handle:
        paths = sorted(
            row["path"]
            for row in csv.DictReader(handle)
            if row["condition"] == condition and row["split"] == "test"
        )
    if len(paths) < n:
        sys.exit(f"{condition}'s test split has {len(paths)} films; ask for at most that many (--n).")
    for i in range(n):
        source = data / paths[i * len(paths) // n]
        shutil.copyfile(source, folder / f"{i:05}{source.suffix}")
    return len(paths)


def worker_start(*, index: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", ",".join(QUEUES)]
        + ["--concurrency", "1", "--prefetch-multiplier", "1", "-n", f"cpu{index}@%h", "--loglevel", "INFO"],
        cwd=REPO,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def consumers_set(app: Any, *, on: list[str], off: list[str]) -> None:
    """The named workers consume the analysis queues, the others none; waits for each answer."""
    for queue in QUEUES:
        for names, command in ((on, app.control.add_consumer), (off, app.control.cancel_consumer)):
            if names:
                replies = command(queue, destination=names, reply=True, timeout=10)
                if len(replies) != len(names):
                    sys.exit(f"Only {len(replies)} of the workers {names} answered about queue {queue}.")
    for _ in range(100):
        active = app.control.inspect(destination=on + off, timeout=5).active_queues() or {}
        serving = {name for name, queues in active.items() if {q["name"] for q in queues} & set(QUEUES)}
        if serving == set(on):
            return
        time.sleep(0.1)
    sys.exit(f"Workers serving the analysis queues: {sorted(serving)}, expected {on}.")


@dataclasses.dataclass
class Run:
    sent: int
    done: int
    failed: int
    seconds: float
    worker_cpu: float  # CPU seconds of the given processes during the run
    idle_share: float  # of the machine's cores
    load_before: float  # 1-minute load average when the batch started


def batch_run(*, folder: Path, condition: str, pids: list[int]) -> Run:
    """Imports the folder as an overnight batch (the previous run's rows cleared: no
    duplicates), then starts it as beat would and waits until every analysis has ended."""
    from django.utils import timezone

    from web.clinical.batches.batches import batch_import, batch_wait, batches_start_due, in_night_window
    from web.clinical.ingest.archive_safety import FolderFiles
    from web.clinical.models import Analysis, Batch, Image, Patient, Study

    for model in (Analysis, Image, Study, Patient, Batch):
        model.objects.all().delete()
    with FolderFiles(folder) as files:
        batch = batch_import(
            files=files,
            source=Batch.Source.FOLDER,
            source_name=str(folder),
            conditions=[condition],
            overnight=True,
        )
    if not in_night_window(timezone.now()):
        sys.exit("It is 23:59, outside the bench's night window: run it again in a minute.")
    cpu_before = {pid: cpu_seconds(pid) for pid in pids}
    load_before = os.getloadavg()[0]
    machine_before = machine_cpu()
    t0 = time.monotonic()
    if batch.pk not in batches_start_due():
        sys.exit(f"Batch {batch.pk} did not start.")
    if not batch_wait(batch=batch, timeout=600):
        sys.exit(f"Batch {batch.pk} did not end within 600 s.")
    seconds = time.monotonic() - t0
    machine_after = machine_cpu()
    busy = machine_after[0] - machine_before[0]
    idle = machine_after[1] - machine_before[1]
    analyses = Analysis.objects.filter(batch=batch)
    return Run(
        sent=analyses.count(),
        done=analyses.filter(state=Analysis.State.SUCCEEDED).count(),
        failed=analyses.filter(state=Analysis.State.FAILED).count(),
        seconds=seconds,
        worker_cpu=sum(cpu_seconds(pid) - cpu_before[pid] for pid in pids),
        idle_share=idle / max(busy + idle, 1e-9),
        load_before=load_before,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--n",
        type=int,
        default=384,
        help="films in the batch (a multiple of 32 keeps the jobs even between two workers)",
    )
    parser.add_argument("--workers", default="1,2", help="worker processes of each configuration, in order")
    parser.add_argument("--rounds", type=int, default=3, help="times each configuration runs, alternating")
    parser.add_argument("--condition", default="pneumonia")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--registry", default=str(REPO / "registry.json"))
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/bench_workers")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    args = parser.parse_args()
    configurations = [int(k) for k in args.workers.split(",")]
    if not configurations or min(configurations) < 1:
        sys.exit("--workers takes worker counts of at least 1, e.g. 1,2")
    data = Path(args.data)
    if not (data / "manifest.csv").is_file():
        sys.exit(f"No real films at {data} (its manifest.csv): see --data.")
    scratch = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    # The whole day is night: this process starts the overnight batch when it chooses.
    env = django_on_scratch(args, scratch, RADTRIAGE_NIGHT_WINDOW="00:00-23:59")
    from django.conf import settings

    from web.clinical.dispatch import celery_app
    from web.engine.readiness import warm_processes_since

    folder = scratch / "incoming"
    folder.mkdir()
    available = films_copy(data=data, condition=args.condition, n=args.n, folder=folder)
    cores = os.cpu_count() or 1
    print(
        f"{args.n} real {args.condition} films (of {available} in its test split), jobs of "
        f"{settings.ANALYSIS_BATCH_SIZE}; worker processes {args.workers}, each a Celery worker "
        f"with one pool process; {cores} cores; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )

    count = max(configurations)
    names = [f"cpu{i}@{socket.gethostname()}" for i in range(1, count + 1)]
    workers: list[subprocess.Popen[bytes]] = []
    results: dict[int, list[float]] = {k: [] for k in configurations}
    try:
        started_wall, started = time.time(), time.monotonic()
        for i in range(1, count + 1):
            workers.append(worker_start(index=i, env=env, log=scratch / f"worker{i}.log"))
        while warm_processes_since(started_wall) < count:
            dead = [w for w in workers if w.poll() is not None]
            if dead or time.monotonic() - started > 600:
                logs = "\n".join(
                    (scratch / f"worker{i}.log").read_text()[-2000:] for i in range(1, count + 1)
                )
                sys.exit("The workers did not start and warm their models:\n" + logs)
            time.sleep(0.2)
        print(f"{count} worker process(es) warm {time.monotonic() - started:.0f} s after start")
        app = celery_app()
        # Each worker's first jobs pay for tracing the model's graph at the job's batch size:
        # every worker runs the batch alone once before anything is timed.
        for i, name in enumerate(names):
            consumers_set(app, on=[name], off=names[:i] + names[i + 1 :])
            batch_run(folder=folder, condition=args.condition, pids=[])
        print("warm-up: the batch run once through each worker alone (not counted)")
        for round_ in range(args.rounds):
            for k in configurations:
                consumers_set(app, on=names[:k], off=names[k:])
                pids = [p for w in workers[:k] for p in [w.pid, *children(w.pid)]]
                run = batch_run(folder=folder, condition=args.condition, pids=pids)
                results[k].append(run.done / run.seconds)
                print(
                    f"round {round_ + 1}, {k} worker process(es): {run.done} of {run.sent} analysed "
                    f"({run.failed} failed) in {run.seconds:.2f} s = {run.done / run.seconds:.1f} images/s; "
                    f"worker CPU {run.worker_cpu / max(run.done, 1) * 1000:.0f} ms/image; cores idle "
                    f"{run.idle_share:.0%}; load average {run.load_before:.2f} before, "
                    f"{os.getloadavg()[0]:.2f} after"
                )
    finally:
        for worker in workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)

    first = configurations[0]
    base = statistics.median(results[first])
    print("images/s (median of the rounds):")
    for k in configurations:
        rate = statistics.median(results[k])
        print(f"  {k} worker process(es): {rate:6.1f} images/s   {rate / base:.2f}x {first}")
    print(f"load average at the end (1, 5, 15 min): {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    import redis

    broker = redis.Redis.from_url(args.redis_url)
    for key in broker.scan_iter(f"{env['RADTRIAGE_NAMESPACE']}*"):
        broker.delete(key)  # only this run's keys: others may share the Redis database
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
