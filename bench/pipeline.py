"""Platform throughput and latency vs the raw engine, measured in the same run.

Starts its own stack (migrate, uvicorn, a Celery worker as `make run` starts them) on a scratch
database and media folder, then:

1. raw: core.analysis.analyze_xray (preprocess + prediction + Grad-CAM) on decoded images, in
   this process, through the ModelManager exactly as a worker does; before the platform runs
   and again after them (the machine's speed drifts), averaged;
2. platform latency: one image at a time, from the start of the upload request to the
   `finished` event arriving on a logged-in websocket (/ws/worklist/);
3. platform throughput, bulk: N images sent back to back through POST /api/uploads/batch/,
   --per-request files a request, --clients requests in flight (a scripted import sends one
   after another; on 2 CPUs a second in flight only competes with the worker for the CPU),
   analysed by the worker in jobs of ANALYSIS_BATCH_SIZE,
   until the last `finished` event: the path a bulk import takes;
4. platform throughput, single: --single-n images sent back to back one per request through
   POST /api/uploads/ (interactive queue, one job each): the path a person at the page takes.

Prints figures and the targets (throughput >= 85 % of raw; p50 latency <= raw + 250 ms);
asserts nothing.

    .venv/bin/python bench/pipeline.py [--n 192] [--per-request 16] [--single-n 40]
        [--latency-n 15] [--image chest.dcm]
        [--registry registry.json] [--condition pneumonia] [--database-url postgres://...]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

# --------------------------------------------------------------------------- inputs


def make_images(n: int, *, image: Path | None, size: int) -> list[bytes]:
    """n distinct DICOM files (distinct SOPInstanceUIDs: the platform de-duplicates)."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    if image is not None:
        template = pydicom.dcmread(image)
    else:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        template = FileDataset("bench.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
        template.SOPClassUID = SecondaryCaptureImageStorage
        template.Modality, template.BodyPartExamined, template.ViewPosition = "DX", "CHEST", "PA"
        template.PatientName, template.PatientSex = "Bench^Patient", "O"
        template.SamplesPerPixel, template.PhotometricInterpretation = 1, "MONOCHROME2"
        template.Rows = template.Columns = size
        template.BitsAllocated, template.BitsStored, template.HighBit = 16, 12, 11
        template.PixelRepresentation = 0
    yy, xx = np.mgrid[0:size, 0:size]
    files = []
    for i in range(n):
        ds = template.copy()
        ds.file_meta = template.file_meta.copy()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.PatientID = f"BENCH-{i:05d}"
        ds.BodyPartExamined = ds.get("BodyPartExamined") or "CHEST"
        if image is None:
            rng = np.random.default_rng(i)
            body = 2000 + 1500 * np.exp(
                -(((yy - size / 2) / (size / 3)) ** 2 + ((xx - size / 2) / (size / 4)) ** 2)
            )
            pixels = np.clip(body + rng.normal(0, 80, (size, size)), 0, 4095).astype(np.uint16)
            ds.PixelData = pixels.tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files.append(buffer.getvalue())
    return files


# --------------------------------------------------------------------------- raw engine


def bench_raw(files: list[bytes], *, registry: Path, condition: str) -> dict[str, Any]:
    from core.analysis import analyze_xray, analyze_xrays
    from core.imaging import load_xray
    from core.model_manager import get_manager

    manager = get_manager(registry)
    xrays = [load_xray(data) for data in files]
    for xray in xrays[:3]:
        outcome = analyze_xray(xray, condition=condition, manager=manager)
    seconds = []
    for xray in xrays:
        start = time.perf_counter()
        analyze_xray(xray, condition=condition, manager=manager)
        seconds.append(time.perf_counter() - start)
    # The engine's own batched call (what a worker runs for bulk jobs), for comparison.
    start = time.perf_counter()
    analyze_xrays(xrays, condition=condition, manager=manager, batch_size=16)
    batched_per_min = 60.0 * len(xrays) / (time.perf_counter() - start)
    return {
        "model_id": outcome.model_id,
        "placeholder": outcome.is_placeholder,
        "architecture": outcome.architecture,
        "latencies": seconds,
        "per_min": 60.0 * len(seconds) / sum(seconds),
        "batched_per_min": batched_per_min,
    }


# --------------------------------------------------------------------------- a tiny websocket


from stack import Client, EventSocket, Stack, percentile  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--n", type=int, default=192, help="images in the bulk throughput run")
    parser.add_argument("--per-request", type=int, default=16, help="files per bulk request")
    parser.add_argument(
        "--clients", type=int, default=1, help="bulk requests in flight at once (the worklist page sends 2)"
    )
    parser.add_argument(
        "--web-workers",
        type=int,
        default=2,
        help="uvicorn worker processes (RADTRIAGE_WEB_WORKERS in production)",
    )
    parser.add_argument(
        "--worker-processes",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="Celery pool processes (default: as `make run` starts them)",
    )
    parser.add_argument(
        "--single-n", type=int, default=40, help="images in the one-per-request throughput run (0: skip)"
    )
    parser.add_argument("--latency-n", type=int, default=15, help="images sent one at a time")
    parser.add_argument("--size", type=int, default=512, help="synthetic DICOM side (pixels)")
    parser.add_argument("--image", type=Path, help="a DICOM to copy instead of synthetic ones")
    parser.add_argument("--registry", type=Path, default=REPO / "registry.json")
    parser.add_argument("--condition", default="pneumonia")
    parser.add_argument("--database-url", default=None, help="default: a scratch SQLite file")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/6"))
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder and logs")
    args = parser.parse_args()

    files = make_images(args.n + args.single_n + args.latency_n + 2, image=args.image, size=args.size)
    print(
        f"{os.cpu_count()} CPUs; {len(files)} DICOM files of {len(files[0]) / 1024:.0f} KiB; "
        f"condition {args.condition}; registry {args.registry}; database "
        f"{'PostgreSQL' if args.database_url else 'SQLite'}"
    )

    raw_files = files[: max(args.n, 10)]
    raw = bench_raw(raw_files, registry=args.registry.resolve(), condition=args.condition)
    print(f"model {raw['model_id']} ({raw['architecture']}{', PLACEHOLDER' if raw['placeholder'] else ''})")

    tmp = Path(tempfile.mkdtemp(prefix="radtriage-bench-"))
    stack = Stack(
        tmp=tmp,
        registry=args.registry.resolve(),
        database_url=args.database_url,
        redis_url=args.redis_url,
        web_workers=args.web_workers,
        worker_processes=args.worker_processes,
    )
    try:
        username, password = stack.start()
        client = Client(f"http://127.0.0.1:{stack.port}", username, password, args.condition)
        ws = EventSocket("127.0.0.1", stack.port, "/ws/worklist/", client.cookie())
        pending = iter(files)

        # Warm-up: the worker imports TensorFlow and loads the model on its first job.
        client.wait(ws, {client.upload(next(pending), i) for i in range(2)})

        latencies = []
        for i in range(args.latency_n):
            start = time.perf_counter()
            analysis_id = client.upload(next(pending), 100 + i)
            client.wait(ws, {analysis_id})
            latencies.append(client.finished[analysis_id] - start)

        cpu_before = cpu_seconds_by_role(stack)
        bulk = run_throughput(
            client,
            ws,
            [next(pending) for _ in range(args.n)],
            per_request=args.per_request,
            clients=args.clients,
        )
        cpu_after = cpu_seconds_by_role(stack)
        bulk["cpu_ms_per_image"] = {
            role: (cpu_after[role] - cpu_before[role]) * 1e3 / args.n for role in cpu_after
        }
        single = (
            run_throughput(client, ws, [next(pending) for _ in range(args.single_n)], per_request=0)
            if args.single_n
            else None
        )
        log = (tmp / "worker.log").read_text(errors="replace")
    finally:
        stack.stop()
        if args.keep:
            print(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    # Again after the platform runs: this machine's speed drifts, and the ratio should compare
    # the platform with the raw core under the same conditions (the two runs are averaged).
    raw = combine_raw(raw, bench_raw(raw_files, registry=args.registry.resolve(), condition=args.condition))
    report(raw, latencies, bulk, single, client, log, args)


def combine_raw(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    print(
        f"raw core before / after the platform runs: {before['per_min']:.0f} / "
        f"{after['per_min']:.0f} images/min (averaged below)"
    )
    return {
        **before,
        "latencies": before["latencies"] + after["latencies"],
        "per_min": (before["per_min"] + after["per_min"]) / 2,
        "batched_per_min": (before["batched_per_min"] + after["batched_per_min"]) / 2,
    }


def cpu_seconds_by_role(stack: Stack) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each part of the system (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, str, float]] = {}  # pid -> (parent, name, seconds)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        # utime + stime, plus the children it reaped (PostgreSQL's ended backends, say).
        stats[int(entry.name)] = (int(fields[1]), name, sum(int(f) for f in fields[11:15]) / tick)
    roots = {proc.pid: role for proc, role in zip(stack.procs, stack.roles, strict=True)}
    totals = dict.fromkeys([*roots.values(), "bench client", "postgres", "redis"], 0.0)
    for pid, (_, name, seconds) in stats.items():
        ancestor, role = pid, None
        while ancestor in stats and role is None:
            role = roots.get(ancestor)
            ancestor = stats[ancestor][0]
        if role is None:
            role = (
                "bench client"
                if pid == os.getpid()
                else "postgres"
                if name == "postgres"
                else "redis"
                if name.startswith("redis-server")
                else None
            )
        if role is not None:
            totals[role] += seconds
    return totals


def run_throughput(
    client: Client, ws: EventSocket, files: list[bytes], *, per_request: int, clients: int = 1
) -> dict[str, Any]:
    """Send files back to back (per_request files a bulk request, from `clients` uploaders at
    once; per_request 0: one single upload after another) and wait for every `finished`."""
    started: dict[int, float] = {}
    step = per_request or 1
    chunks = [(i, files[i : i + step]) for i in range(0, len(files), step)]
    uploaders = [client] + [client.twin() for _ in range(clients - 1)] if per_request else [client]
    lock = threading.Lock()

    def send(index: int) -> None:
        uploader = uploaders[index % len(uploaders)]
        for offset, chunk in chunks[index :: len(uploaders)]:
            at = time.perf_counter()
            ids = (
                uploader.upload_many(chunk, 2000 + offset)
                if per_request
                else [uploader.upload(chunk[0], 1000 + offset)]
            )
            with lock:
                started.update(dict.fromkeys(ids, at))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(uploaders))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if len(started) != len(files):
        raise RuntimeError("an upload thread failed; see the error above")
    client.wait(ws, set(started))
    elapsed = max(client.finished[i] for i in started) - t0
    return {
        "per_min": 60.0 * len(files) / elapsed,
        "latencies": [client.finished[i] - started[i] for i in started],
    }


def report(
    raw: dict[str, Any],
    latencies: list[float],
    bulk: dict[str, Any],
    single: dict[str, Any] | None,
    client: Client,
    log: str,
    args: argparse.Namespace,
) -> None:
    raw_p50 = statistics.median(raw["latencies"])
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    ms = 1e3
    print(f"\n{'':40} {'images/min':>10} {'p50 ms':>8} {'p95 ms':>8}")
    print(
        f"{'raw core (predict + Grad-CAM, batch 1)':40} {raw['per_min']:>10.0f} "
        f"{raw_p50 * ms:>8.1f} {percentile(raw['latencies'], 95) * ms:>8.1f}"
    )
    print(f"{'raw core, batches of 16':40} {raw['batched_per_min']:>10.0f}")
    print(f"{'platform, one at a time':40} {'':>10} {p50 * ms:>8.1f} {p95 * ms:>8.1f}")
    rows = [(f"platform, {args.n} bulk ({args.per_request}/req, {args.clients} at once)", bulk)]
    if single:
        rows.append((f"platform, {args.single_n} single uploads", single))
    for label, run in rows:
        print(
            f"{label:40} {run['per_min']:>10.0f} {percentile(run['latencies'], 50) * ms:>8.1f} "
            f"{percentile(run['latencies'], 95) * ms:>8.1f}"
        )
    single_tasks = task_seconds(log, "worker.tasks.analyze[")
    batch_tasks = task_seconds(log, "worker.tasks.analyze_batch[")
    print(
        f"\nwhere the time goes (median): single upload request "
        f"{statistics.median(client.upload_seconds) * ms:.1f} ms; bulk upload "
        f"{statistics.median(client.bulk_upload_seconds) * ms:.1f} ms per image; worker "
        f"{statistics.median(single_tasks[2:] or single_tasks) * ms:.1f} ms per single job, "
        f"{statistics.median(batch_tasks or [0.0]) * ms:.0f} ms per batch job "
        f"({len(batch_tasks)} jobs); the model's predict + Grad-CAM alone ~{raw_p50 * ms:.1f} ms"
    )
    cpu = bulk["cpu_ms_per_image"]
    print(
        "CPU per image in the bulk run (ms, all cores): "
        + ", ".join(f"{role} {ms:.1f}" for role, ms in cpu.items())
        + f"; total {sum(cpu.values()):.1f} on {os.cpu_count()} CPUs, against "
        f"{60e3 * (os.cpu_count() or 1) / raw['per_min']:.1f} CPU-ms per raw image"
    )
    ratio = bulk["per_min"] / raw["per_min"]
    print(
        f"\nthroughput platform (bulk) / raw = {ratio:.1%} (target >= 85%: "
        f"{'met' if ratio >= 0.85 else 'NOT met'}); / raw in batches of 16 = "
        f"{bulk['per_min'] / raw['batched_per_min']:.1%}"
    )
    if single:
        print(f"throughput platform (single uploads) / raw = {single['per_min'] / raw['per_min']:.1%}")
    print(
        f"p50 latency overhead = {(p50 - raw_p50) * ms:.0f} ms (target <= 250 ms: "
        f"{'met' if p50 - raw_p50 <= 0.25 else 'NOT met'})"
    )


def task_seconds(log: str, task: str) -> list[float]:
    return [
        float(line.rsplit(" in ", 1)[1].split("s:")[0])
        for line in log.splitlines()
        if task in line and " succeeded in " in line
    ]


if __name__ == "__main__":
    main()
