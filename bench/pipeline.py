"""Platform throughput and latency vs the raw engine, measured in the same run.

Starts its own stack (migrate, daphne, one Celery worker with concurrency 1) on a scratch
database and media folder, then:

1. raw: core.analysis.analyze_xray (preprocess + prediction + Grad-CAM) on decoded images, in
   this process, through the ModelManager exactly as a worker does;
2. platform latency: one image at a time, from the start of the upload request to the
   `finished` event arriving on a logged-in websocket (/ws/worklist/);
3. platform throughput: N uploads sent back to back, until the last `finished` event.

Prints figures and the issue's targets (throughput >= 85 % of raw; p50 latency <= raw + 250 ms);
asserts nothing.

    .venv/bin/python bench/pipeline.py [--n 40] [--latency-n 15] [--image chest.dcm]
        [--registry registry.json] [--condition pneumonia] [--database-url postgres://...]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import requests  # noqa: E402

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
            body = 2000 + 1500 * np.exp(-(((yy - size / 2) / (size / 3)) ** 2
                                           + ((xx - size / 2) / (size / 4)) ** 2))
            pixels = np.clip(body + rng.normal(0, 80, (size, size)), 0, 4095).astype(np.uint16)
            ds.PixelData = pixels.tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files.append(buffer.getvalue())
    return files


# --------------------------------------------------------------------------- raw engine


def bench_raw(files: list[bytes], *, registry: Path, condition: str) -> dict[str, Any]:
    from core.analysis import analyze_xray
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
    return {"model_id": outcome.model_id, "placeholder": outcome.is_placeholder,
            "architecture": outcome.architecture, "latencies": seconds,
            "per_min": 60.0 * len(seconds) / sum(seconds)}


# --------------------------------------------------------------------------- a tiny websocket


class EventSocket:
    """Minimal RFC 6455 client (text frames from the server only), timestamping each event."""

    def __init__(self, host: str, port: int, path: str, cookie: str) -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           f"Sec-WebSocket-Version: 13\r\nOrigin: http://{host}:{port}\r\n"
                           f"Cookie: {cookie}\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise RuntimeError("websocket closed during the handshake")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"websocket refused: {head.decode(errors='replace')}")
        self.sock.settimeout(None)
        self.events: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def _read(self) -> None:
        try:
            while True:
                b0, b1 = self._exactly(2)
                length = b1 & 0x7F
                if length == 126:
                    length = int.from_bytes(self._exactly(2), "big")
                elif length == 127:
                    length = int.from_bytes(self._exactly(8), "big")
                payload = self._exactly(length)
                if b0 & 0x0F == 0x1:
                    self.events.put((time.perf_counter(), json.loads(payload)))
                elif b0 & 0x0F == 0x8:
                    return
        except (EOFError, OSError):
            return


# --------------------------------------------------------------------------- the stack


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


class Stack:
    def __init__(self, *, tmp: Path, registry: Path, database_url: str | None,
                 redis_url: str) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.env = {**os.environ, "DEBUG": "1", "REDIS_URL": redis_url,
                    "RADTRIAGE_NAMESPACE": f"bench{uuid.uuid4().hex[:6]}",
                    "MEDIA_ROOT": str(tmp / "media"), "RADTRIAGE_REGISTRY": str(registry),
                    "DATABASE_URL": database_url or f"sqlite:///{tmp / 'bench.sqlite3'}",
                    "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "LOG_LEVEL": "WARNING"}
        self.procs: list[subprocess.Popen[bytes]] = []

    def manage(self, *args: str) -> str:
        return subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, env=self.env,
                              check=True, capture_output=True, text=True).stdout

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def start(self) -> tuple[str, str]:
        self.manage("migrate", "--noinput")
        _, _, rest = self.manage("demo_admin", "--credentials-file",
                                 str(self.tmp / "admin.txt")).partition("username ")
        username, _, password = rest.strip().partition("  password ")
        self.spawn("daphne", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p",
                              str(self.port), "web.asgi:application"])
        self.spawn("worker", [sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q",
                              "interactive,batch,maintenance", "--concurrency", "1",
                              "--prefetch-multiplier", "1", "-n", "bench@%h", "--without-gossip",
                              "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"])
        wait_port(self.port, 60)
        deadline = time.monotonic() + 120
        while "ready." not in (self.tmp / "worker.log").read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise RuntimeError("the Celery worker did not start; see worker.log")
            time.sleep(0.2)
        return username, password.strip()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


class Client:
    def __init__(self, base: str, username: str, password: str, condition: str) -> None:
        self.base, self.condition = base, condition
        self.http = requests.Session()
        self.http.get(f"{base}/login/").raise_for_status()
        response = self.http.post(f"{base}/login/", data={
            "username": username, "password": password,
            "csrfmiddlewaretoken": self.http.cookies["csrftoken"]},
            headers={"Referer": f"{base}/login/"}, allow_redirects=False)
        if response.status_code != 302:
            raise RuntimeError("could not log in to the bench stack")
        self.finished: dict[int, float] = {}
        self.upload_seconds: list[float] = []

    def cookie(self) -> str:
        return f"sessionid={self.http.cookies['sessionid']}"

    def upload(self, data: bytes, index: int) -> int:
        start = time.perf_counter()
        response = self.http.post(
            f"{self.base}/api/uploads/", files={"file": (f"bench-{index}.dcm", data)},
            data={"conditions": self.condition},
            headers={"X-CSRFToken": self.http.cookies["csrftoken"], "Referer": self.base + "/"})
        if response.status_code != 201:
            raise RuntimeError(f"upload failed: {response.status_code} {response.text[:300]}")
        self.upload_seconds.append(time.perf_counter() - start)
        return int(response.json()["image"]["analyses"][0]["id"])

    def wait(self, ws: EventSocket, ids: set[int], timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not ids <= self.finished.keys():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"timed out waiting for analyses {sorted(ids - set(self.finished))}")
            try:
                at, event = ws.events.get(timeout=remaining)
            except queue.Empty:
                continue
            if event.get("event") == "finished":
                self.finished[int(event["analysis"]["id"])] = at
            elif event.get("event") == "failed":
                raise RuntimeError(f"analysis failed: {event['analysis']['error_message']}")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--n", type=int, default=40, help="images in the throughput run")
    parser.add_argument("--latency-n", type=int, default=15, help="images sent one at a time")
    parser.add_argument("--size", type=int, default=512, help="synthetic DICOM side (pixels)")
    parser.add_argument("--image", type=Path, help="a DICOM to copy instead of synthetic ones")
    parser.add_argument("--registry", type=Path, default=REPO / "registry.json")
    parser.add_argument("--condition", default="pneumonia")
    parser.add_argument("--database-url", default=None, help="default: a scratch SQLite file")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL",
                                                              "redis://127.0.0.1:6379/6"))
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder and logs")
    args = parser.parse_args()

    files = make_images(args.n + args.latency_n + 2, image=args.image, size=args.size)
    print(f"{os.cpu_count()} CPUs; {len(files)} DICOM files of {len(files[0]) / 1024:.0f} KiB; "
          f"condition {args.condition}; registry {args.registry}")

    raw = bench_raw(files[: max(args.n, 10)], registry=args.registry.resolve(),
                    condition=args.condition)
    raw_p50 = statistics.median(raw["latencies"])
    print(f"model {raw['model_id']} ({raw['architecture']}"
          f"{', PLACEHOLDER' if raw['placeholder'] else ''})")

    tmp = Path(tempfile.mkdtemp(prefix="radtriage-bench-"))
    stack = Stack(tmp=tmp, registry=args.registry.resolve(), database_url=args.database_url,
                  redis_url=args.redis_url)
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

        started: dict[int, float] = {}
        t0 = time.perf_counter()
        for i in range(args.n):
            at = time.perf_counter()
            started[client.upload(next(pending), 1000 + i)] = at
        client.wait(ws, set(started))
        elapsed = max(client.finished[i] for i in started) - t0
        per_min = 60.0 * args.n / elapsed
        loaded = [client.finished[i] - started[i] for i in started]
        task_seconds = [float(line.rsplit(" in ", 1)[1].split("s:")[0]) for line in
                        (tmp / "worker.log").read_text(errors="replace").splitlines()
                        if "worker.tasks.analyze[" in line and " succeeded in " in line]
    finally:
        stack.stop()
        if args.keep:
            print(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    ms = 1e3
    print(f"\n{'':34} {'images/min':>10} {'p50 ms':>8} {'p95 ms':>8}")
    print(f"{'raw core (predict + Grad-CAM)':34} {raw['per_min']:>10.0f} {raw_p50 * ms:>8.1f} "
          f"{percentile(raw['latencies'], 95) * ms:>8.1f}")
    print(f"{'platform, one at a time':34} {'':>10} {p50 * ms:>8.1f} {p95 * ms:>8.1f}")
    print(f"{'platform, ' + str(args.n) + ' back to back':34} {per_min:>10.0f} "
          f"{percentile(loaded, 50) * ms:>8.1f} {percentile(loaded, 95) * ms:>8.1f}")
    print(f"\nwhere the time goes (median): upload request "
          f"{statistics.median(client.upload_seconds) * ms:.1f} ms; worker task "
          f"{statistics.median(task_seconds[2:] or task_seconds) * ms:.1f} ms "
          f"(of which the model's predict + Grad-CAM is ~{raw_p50 * ms:.1f} ms)")
    ratio = per_min / raw["per_min"]
    print(f"\nthroughput platform/raw = {ratio:.1%} (target >= 85%: "
          f"{'met' if ratio >= 0.85 else 'NOT met'})")
    print(f"p50 latency overhead = {(p50 - raw_p50) * ms:.0f} ms (target <= 250 ms: "
          f"{'met' if p50 - raw_p50 <= 0.25 else 'NOT met'})")


if __name__ == "__main__":
    main()
