"""A batch through `manage.py import_batch --wait` with a real Celery worker, vs the raw core
throughput at the same batch size, in the same run.

On a scratch database, media folder and Redis namespace: writes --n generated chest DICOM
files to a folder, starts a worker as `make run` does (one pool process per core up to two;
--concurrency to change it) and times its warm start (from "ready" to the models warm),
imports the folder as one batch for --condition and waits for every analysis. In this process,
runs core.analysis.analyze_with_model_batch over the same decoded images in jobs of
ANALYSIS_BATCH_SIZE: with the condition's model before the worker starts and after the batch
(averaged: the raw figure), then with every active model of the registry.
Prints images/min (platform and raw), CPU seconds per image by process (the import command,
the worker's pool and parent processes; read from /proc), and the projected time of a
10,000-image night with each active model. Asserts nothing.

    .venv/bin/python bench/batch.py [--n 2000] [--condition pneumonia] [--size 512]
        [--registry registry.json] [--database-url postgres://...] [--redis-url redis://...]
        [--concurrency 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
NIGHT = 10_000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """user + system CPU of a live process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_cpu() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine so far, all cores (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLOCK_TICKS, idle / CLOCK_TICKS


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def database_create(url: str) -> None:
    """The scratch database, created when missing."""
    import psycopg

    base, name = url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as connection:
        if not connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            connection.execute(f'CREATE DATABASE "{name}"')


def django_on_scratch(args: argparse.Namespace, scratch: Path, **extra: str) -> dict[str, str]:
    """This process's environment for a bench on its own database (created and migrated), Redis
    namespace and media folder; returns it for the worker processes the bench starts."""
    env = {
        **os.environ,
        "DATABASE_URL": args.database_url,
        "REDIS_URL": args.redis_url,
        "RADTRIAGE_NAMESPACE": f"bench{uuid.uuid4().hex[:8]}",
        "MEDIA_ROOT": str(scratch / "media"),
        "RADTRIAGE_REGISTRY": args.registry,
        "DJANGO_SETTINGS_MODULE": "web.settings",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }
    os.environ.update(env)
    database_create(args.database_url)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return env


def write_images(folder: Path, n: int, size: int) -> None:
    from tests.web.fixtures import dicom_bytes

    for i in range(n):
        (folder / f"{i:05}.dcm").write_bytes(dicom_bytes(patient_id=f"BENCH-{i:05}", seed=i, size=size))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000, help="images in the batch")
    parser.add_argument("--size", type=int, default=512, help="pixels per side of the generated images")
    parser.add_argument("--condition", default="pneumonia")
    parser.add_argument("--registry", default=str(REPO / "registry.json"))
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/bench_batch")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=2 if (os.cpu_count() or 1) >= 2 else 1,
        help="worker pool processes (default: as `make run`, one per core up to two)",
    )
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    env = django_on_scratch(args, scratch)
    from django.conf import settings

    from tests.web.fixtures import dicom_bytes
    from web.clinical.ingest.parts import UploadFields
    from web.clinical.ingest.uploads import image_upload
    from web.clinical.models import Analysis, Batch, Image, Patient, Study

    for model in (Analysis, Image, Study, Patient, Batch):
        model.objects.all().delete()
    folder = scratch / "incoming"
    folder.mkdir()
    write_images(folder, args.n, args.size)
    batch_size = settings.ANALYSIS_BATCH_SIZE
    print(
        f"{args.n} chest DICOM {args.size}x{args.size}, condition {args.condition}, jobs of {batch_size}, "
        f"{args.concurrency} worker pool process(es)"
    )

    from core.analysis import analyze_with_model_batch
    from core.imaging import load_xray
    from core.model_manager import get_manager

    xrays = [load_xray(p.read_bytes()) for p in sorted(folder.glob("*.dcm"))]

    def raw_per_image(sample: list, condition: str | None, model_id: str | None = None) -> float:
        """Seconds per image of analyze_with_model_batch in jobs of batch_size (after a warm-up)."""
        loaded = get_manager(args.registry).get(condition=condition, model_id=model_id)
        analyze_with_model_batch(sample[:batch_size], loaded=loaded, batch_size=batch_size)
        if len(sample) % batch_size:  # the last, shorter job traces its own graph: not timed
            analyze_with_model_batch(
                sample[-(len(sample) % batch_size) :], loaded=loaded, batch_size=batch_size
            )
        t = time.perf_counter()
        for start in range(0, len(sample), batch_size):
            analyze_with_model_batch(sample[start : start + batch_size], loaded=loaded, batch_size=batch_size)
        return (time.perf_counter() - t) / len(sample)

    raw_before = raw_per_image(xrays, args.condition)

    log_path = scratch / "worker.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker", "worker"]
        + ["-Q", "interactive,maintenance,batch,reports"]
        + [
            "--concurrency",
            str(args.concurrency),
            "-n",
            "bench@%h",
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "INFO",
        ],
        cwd=REPO,
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        started, started_wall = time.monotonic(), time.time()
        while "ready." not in log_path.read_text(errors="replace"):
            if worker.poll() is not None or time.monotonic() - started > 180:
                sys.exit("The worker did not start:\n" + log_path.read_text(errors="replace")[-3000:])
            time.sleep(0.1)
        worker_ready = time.monotonic()
        # `make run` says "ready" when the pool's models are warm (manage.py wait_ready): the
        # goal is the first result within 5 s of that.
        from web.engine.readiness import warm_processes_since

        while warm_processes_since(started_wall) < args.concurrency:
            if worker.poll() is not None or time.monotonic() - worker_ready > 300:
                sys.exit(
                    "The worker never warmed its models:\n" + log_path.read_text(errors="replace")[-3000:]
                )
            time.sleep(0.1)
        ready = time.monotonic()
        print(
            f"worker: said ready {worker_ready - started:.1f} s after start; `make run` ready "
            f"(models warm) {ready - worker_ready:.1f} s after that"
        )
        first = image_upload(
            data=dicom_bytes(patient_id="BENCH-FIRST", seed=10**6, size=args.size),
            filename="first.dcm",
            fields=UploadFields(),
            conditions=[args.condition],
        ).analyses[0]
        while not Analysis.objects.filter(pk=first.pk, state__in=["succeeded", "failed"]).exists():
            if time.monotonic() - ready > 300:
                break
            time.sleep(0.05)
        print(f"first result {time.monotonic() - ready:.1f} s after `make run` said ready (goal: 5 s)")
        while "Models warm in process" not in log_path.read_text(errors="replace"):
            if worker.poll() is not None or time.monotonic() - ready > 300:
                break
            time.sleep(0.1)
        print(
            f"worker: ready {ready - started:.1f} s after start; "
            f"models warm {time.monotonic() - ready:.1f} s after ready"
        )

        before = {pid: cpu_seconds(pid) for pid in [worker.pid, *children(worker.pid)]}
        import resource

        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        machine_before = machine_cpu()
        t0, t0_wall = time.monotonic(), time.time()
        command = subprocess.run(
            [sys.executable, "manage.py", "import_batch", str(folder), "--wait", "--json"]
            + ["--conditions", args.condition],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.monotonic() - t0
        machine_after = machine_cpu()
        after = {pid: cpu_seconds(pid) for pid in [worker.pid, *children(worker.pid)]}
        # Only the import command has been reaped since: the worker is still running.
        done_usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        import_cpu_s = (done_usage.ru_utime + done_usage.ru_stime) - (usage.ru_utime + usage.ru_stime)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
    if command.returncode:
        sys.exit(command.stderr[-3000:])
    summary = json.loads(command.stdout)
    pool = sum(after.get(p, 0) - before.get(p, 0) for p in after if p != worker.pid)
    parent = after[worker.pid] - before[worker.pid]
    batch = Batch.objects.get(pk=summary["batch"])
    analysing = (batch.finished_at - batch.started_at).total_seconds() if batch.finished_at else float("nan")
    n_done = summary["analyses_done"]
    print(
        f"batch {summary['batch']}: {summary['accepted']} accepted, {summary['analyses_done']} done, "
        f"{summary['analyses_failed']} failed"
    )
    print(f"platform: {n_done / wall * 60:,.0f} images/min end to end ({wall:.1f} s, import + analyses)")
    print(f"          analyses from the batch's start to its end: {analysing:.1f} s")
    from django.db.models import Max, Min

    marks = Analysis.objects.filter(batch=batch).aggregate(
        imported=Max("created_at"), first=Min("finished_at"), last=Max("finished_at")
    )
    if batch.started_at and all(marks.values()):

        def since(moment: object) -> float:
            return moment.timestamp() - t0_wall  # type: ignore[attr-defined]

        print(
            f"          timeline from the command's start: batch created {since(batch.started_at):.1f} s "
            f"(start-up), last file imported {since(marks['imported']):.1f} s, first result "
            f"{since(marks['first']):.1f} s, last result {since(marks['last']):.1f} s, command "
            f"done {wall:.1f} s"
        )
    print("CPU per image:")
    print(
        f"  import_batch command (decode, recognise, thumbnail, rows): {import_cpu_s / args.n * 1000:6.1f} ms"
    )
    print(
        f"  worker pool process(es) (analysis + Grad-CAM + storing):   {pool / max(n_done, 1) * 1000:6.1f} ms"
    )
    print(
        f"  worker parent process (broker, bookkeeping):               "
        f"{parent / max(n_done, 1) * 1000:6.1f} ms"
    )
    # What the machine spent besides: PostgreSQL, Redis, the kernel, this script's polling,
    # anything else running; and what it left idle (the share of the cores nobody used).
    busy = machine_after[0] - machine_before[0]
    idle = machine_after[1] - machine_before[1]
    rest = busy - import_cpu_s - pool - parent
    print(
        f"  everything else (PostgreSQL, Redis, kernel, others):       {rest / max(n_done, 1) * 1000:6.1f} ms"
    )
    print(f"  cores idle during the batch: {idle / max(busy + idle, 1e-9):.0%}")

    # The raw engine on the same images, in jobs of the same size; the run's condition before
    # and after the platform, averaged (this shared machine's speed drifts between minutes).
    manager = get_manager(args.registry)
    active = sorted(manager.registry().active_models)
    raw_after = raw_per_image(xrays, args.condition)
    raw: dict[str, float] = {args.condition: (raw_before + raw_after) / 2}
    for condition in active:
        if condition != args.condition:
            raw[condition] = raw_per_image(xrays[: min(len(xrays), 4 * batch_size)], condition)
    platform_per_image = wall / max(n_done, 1)
    print(
        f"raw core ({args.condition}, batch {batch_size}): {60 / raw[args.condition]:,.0f} images/min "
        f"(before the platform {60 / raw_before:,.0f}, after {60 / raw_after:,.0f}); "
        f"platform / raw = {raw[args.condition] / platform_per_image:.0%}"
    )
    print(
        f"projected {NIGHT:,}-image night, this worker ({args.concurrency} pool process(es)) "
        f"(the platform's overhead per image measured with {args.condition}):"
    )
    overhead = platform_per_image - raw[args.condition]
    for condition in active:
        seconds = NIGHT * (raw[condition] + overhead)
        print(
            f"  {condition:22} {manager.get(condition=condition).model_id:42} "
            f"raw {raw[condition] * 1000:6.1f} ms/img -> {seconds / 3600:5.2f} h"
        )
    # The "intensive" family is inactive (see its card), but a site may switch to it: what
    # would a night cost with it?
    densenets = [e for e in manager.registry().models.values() if e.architecture == "densenet121"]
    for entry in densenets:
        per_image = raw_per_image(xrays[: min(len(xrays), 4 * batch_size)], None, entry.id)
        seconds = NIGHT * (per_image + overhead)
        print(
            f"  {entry.condition:22} {entry.id + ' (inactive)':42} "
            f"raw {per_image * 1000:6.1f} ms/img -> {seconds / 3600:5.2f} h"
        )
    if not densenets:
        print("  (no DenseNet121 model in the registry: nothing to project for the intensive family)")
    import redis

    broker = redis.Redis.from_url(args.redis_url)
    for key in broker.scan_iter(f"{env['RADTRIAGE_NAMESPACE']}*"):
        broker.delete(key)  # only this run's keys: others may share the Redis database
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
