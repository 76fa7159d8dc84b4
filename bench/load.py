"""Load on one machine: many uploaders at once and many open pages, against a stack it starts.

Starts its own stack as bench/pipeline.py does (migrate, uvicorn, a Celery worker) on a scratch
PostgreSQL database (created, then dropped) or a scratch SQLite file (--sqlite), loopback only,
then:

1. baseline: --baseline single uploads one at a time, nothing else going on (the raw
   single-upload latency of this machine and this run);
2. opens --sockets logged-in websockets on /ws/worklist/ (each an open worklist page);
3. load: --uploads single uploads (POST /api/uploads/) from --clients concurrent clients (one
   HTTP connection each, sending back to back), and waits until every analysis has finished;
4. prints upload latency p50/p95/p99 for both, errors, and for every socket the events it
   received against those expected (queued, started, finished for every analysis).

Goal (printed, not asserted): 0 errors, 0 missed events, load p95 <= 1.5 x load p50.
Bounded: stops by itself after --max-seconds whatever happens, and cleans up.

    .venv/bin/python bench/load.py [--uploads 200] [--clients 50] [--sockets 100] [--baseline 10]
        [--size 256] [--max-seconds 900] [--sqlite] [--redis-url redis://127.0.0.1:6379/6]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from pipeline import make_images  # noqa: E402
from stack import Client, EventSocket, Stack, percentile  # noqa: E402

EXPECTED_EVENTS = ("queued", "started", "finished")


class Deadline(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise Deadline


def timed_upload(client: Client, data: bytes, index: int) -> tuple[float, int | None, str]:
    """(seconds, analysis id or None, error) for one single upload."""
    start = time.perf_counter()
    try:
        response = client.http.post(
            f"{client.base}/api/uploads/",
            files={"file": (f"load-{index}.dcm", data)},
            data={"conditions": client.condition},
            headers={"X-CSRFToken": client.http.cookies["csrftoken"], "Referer": client.base + "/"},
            timeout=120,
        )
    except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
        return time.perf_counter() - start, None, f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - start
    if response.status_code != 201:
        return seconds, None, f"HTTP {response.status_code}: {response.text[:200]}"
    return seconds, int(response.json()["image"]["analyses"][0]["id"]), ""


def seen_by(socket: EventSocket) -> set[tuple[int, str]]:
    """(analysis id, event) pairs a socket has received so far (drains its queue)."""
    seen: set[tuple[int, str]] = getattr(socket, "seen", set())
    while not socket.events.empty():
        _, event = socket.events.get_nowait()
        if event.get("type") == "analysis" and "analysis" in event:
            seen.add((int(event["analysis"]["id"]), str(event["event"])))
    socket.seen = seen  # type: ignore[attr-defined]
    return seen


def wait_finished(sockets: list[EventSocket], ids: set[int], timeout: float) -> set[int]:
    """Wait until the first socket has seen every analysis finish (or fail); returns those
    that did not finish in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = seen_by(sockets[0])
        ended = {i for i, e in seen if e in ("finished", "failed")}
        if ids <= ended:
            return set()
        time.sleep(0.2)
    ended = {i for i, e in seen_by(sockets[0]) if e in ("finished", "failed")}
    return ids - ended


def step(message: str, since: float) -> None:
    print(f"[{time.perf_counter() - since:6.1f} s] {message}", flush=True)


def fmt(values: list[float]) -> str:
    if not values:
        return "n/a"
    ms = 1e3
    return (
        f"p50 {percentile(values, 50) * ms:7.1f} ms  p95 {percentile(values, 95) * ms:7.1f} ms  "
        f"p99 {percentile(values, 99) * ms:7.1f} ms"
    )


def scratch_postgres(admin_url: str, prefix: str) -> tuple[str, str]:
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + f"/{name}", name


def drop_postgres(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument("--clients", type=int, default=50, help="concurrent uploading clients")
    parser.add_argument("--sockets", type=int, default=100, help="open worklist websockets")
    parser.add_argument("--baseline", type=int, default=10, help="single uploads one at a time first")
    parser.add_argument("--size", type=int, default=256, help="synthetic DICOM side (pixels)")
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--worker-processes", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--registry", type=Path, default=REPO / "registry.json")
    parser.add_argument("--condition", default="pneumonia")
    parser.add_argument("--max-seconds", type=int, default=900, help="the whole run stops after this")
    parser.add_argument("--sqlite", action="store_true", help="a scratch SQLite file instead of PostgreSQL")
    parser.add_argument("--pg-admin-url", default="postgres://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--db-prefix", default="radtriage_load", help="scratch database name prefix")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/6"))
    args = parser.parse_args()

    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(args.max_seconds)
    wall_start = time.perf_counter()
    files = make_images(args.uploads + args.baseline + 2, image=None, size=args.size)
    print(
        f"{os.cpu_count()} CPUs; {args.uploads} uploads from {args.clients} clients, {args.sockets} "
        f"websockets; DICOM {len(files[0]) / 1024:.0f} KiB; {args.web_workers} web / "
        f"{args.worker_processes} worker processes; database {'SQLite' if args.sqlite else 'PostgreSQL'}"
    )
    tmp = Path(tempfile.mkdtemp(prefix="radtriage-load-"))
    database_url, database_name = (
        (None, "") if args.sqlite else scratch_postgres(args.pg_admin_url, args.db_prefix)
    )
    stack = Stack(
        tmp=tmp,
        registry=args.registry.resolve(),
        database_url=database_url,
        redis_url=args.redis_url,
        web_workers=args.web_workers,
        worker_processes=args.worker_processes,
    )
    sockets: list[EventSocket] = []
    try:
        username, password = stack.start()
        step("stack started", wall_start)
        base = f"http://127.0.0.1:{stack.port}"
        client = Client(base, username, password, args.condition)
        pending = iter(files)
        sockets.append(EventSocket("127.0.0.1", stack.port, "/ws/worklist/", client.cookie()))

        # Warm-up (the worker loads TensorFlow and the model on its first job), then the baseline.
        warm = {timed_upload(client, next(pending), i)[1] for i in range(2)} - {None}
        if not warm or wait_finished(sockets, {i for i in warm if i is not None}, 300):
            raise RuntimeError("the warm-up uploads were not analysed within 300 s")
        step("warm-up analysed", wall_start)
        baseline: list[float] = []
        for i in range(args.baseline):
            seconds, analysis_id, error = timed_upload(client, next(pending), 10 + i)
            if error:
                raise RuntimeError(f"baseline upload failed: {error}")
            baseline.append(seconds)
            if wait_finished(sockets, {analysis_id} if analysis_id else set(), 120):
                raise RuntimeError(f"baseline analysis {analysis_id} did not finish within 120 s")
        step("baseline done", wall_start)

        # The open pages, all listening before the first upload of the load.
        opened = time.perf_counter()
        while len(sockets) < args.sockets:
            sockets.append(EventSocket("127.0.0.1", stack.port, "/ws/worklist/", client.cookie()))
        print(f"{len(sockets)} websockets open in {time.perf_counter() - opened:.1f} s")
        for socket in sockets:
            seen_by(socket)
            socket.seen = set()  # type: ignore[attr-defined]  # count the load's events only

        load_files = [next(pending) for _ in range(args.uploads)]
        results: list[tuple[float, int | None, str]] = []
        globals()["_results"] = results  # the clean-up keeps the logs when an upload failed
        lock = threading.Lock()
        uploaders = [client.twin() for _ in range(args.clients)]
        go = threading.Barrier(args.clients)

        def send(k: int) -> None:
            go.wait()
            for index in range(k, args.uploads, args.clients):
                outcome = timed_upload(uploaders[k], load_files[index], 1000 + index)
                with lock:
                    results.append(outcome)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=send, args=(k,), daemon=True) for k in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        upload_wall = time.perf_counter() - t0
        step(f"{len(results)} uploads sent", wall_start)
        ids = {analysis_id for _, analysis_id, _ in results if analysis_id is not None}
        unfinished = wait_finished(
            sockets, ids, max(60.0, args.max_seconds - (time.perf_counter() - wall_start))
        )
        analysed_wall = time.perf_counter() - t0
        time.sleep(2.0)  # the last events to the other sockets
        expected = {(i, e) for i in ids for e in EXPECTED_EVENTS}
        received = [len(seen_by(s) & expected) for s in sockets]
        failed = {i for s in sockets for i, e in seen_by(s) if e == "failed"}
    except (Deadline, RuntimeError) as exc:
        why = f"passed --max-seconds {args.max_seconds}" if isinstance(exc, Deadline) else str(exc)
        print(f"\nSTOPPED: {why}; no figures.")
        for name in ("web", "worker"):
            log = tmp / f"{name}.log"
            if log.exists():
                print(f"--- {name}.log (end)\n{log.read_text(errors='replace')[-1500:]}")
        print(f"logs kept in {tmp}")
        tmp = Path("/nonexistent")  # keep them
        raise SystemExit(2) from None
    finally:
        signal.alarm(0)
        for socket in sockets:
            with contextlib.suppress(OSError):
                socket.sock.close()
        stack.stop()
        if any(error for _, _, error in globals().get("_results", [])):
            print(f"uploads failed: logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        if database_name:
            drop_postgres(args.pg_admin_url, database_name)

    latencies = [seconds for seconds, _, error in results if not error]
    errors = [error for _, _, error in results if error]
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    missed = sum(len(expected) - n for n in received)
    print(f"\nbaseline, {len(baseline)} single uploads one at a time:  {fmt(baseline)}")
    print(f"load, {args.uploads} uploads from {args.clients} clients:       {fmt(latencies)}")
    print(
        f"  p95 / p50 = {p95 / p50:.2f} (goal <= 1.5); load p50 / baseline p50 = "
        f"{p50 / statistics.median(baseline):.1f}x; uploads took {upload_wall:.1f} s "
        f"({len(results) / upload_wall:.1f}/s), all analysed after {analysed_wall:.1f} s"
    )
    print(f"  errors: {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
    print(f"  analyses not finished: {len(unfinished)}; failed: {len(failed)}")
    print(
        f"events per websocket: expected {len(expected)} ({len(ids)} analyses x queued/started/finished); "
        f"received min {min(received)}, median {statistics.median(received):.0f}, max {max(received)}; "
        f"sockets that missed any: {sum(n < len(expected) for n in received)}/{len(sockets)}; "
        f"missed in all: {missed}"
    )
    goal = not errors and not missed and not unfinished and p95 <= 1.5 * p50
    print(f"goal (0 errors, 0 missed events, p95 <= 1.5 x p50): {'met' if goal else 'NOT met'}")
    print(f"whole run {time.perf_counter() - wall_start:.0f} s")


if __name__ == "__main__":
    main()
