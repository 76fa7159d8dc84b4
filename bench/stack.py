"""The stack the platform benches run against (bench/pipeline.py, bench/load.py): a scratch
database and media folder, uvicorn and a Celery worker started as `make run` starts them, and
the HTTP and websocket clients that drive it."""

from __future__ import annotations

import base64
import json
import os
import queue
import signal
import socket
import subprocess
import sys
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


class EventSocket:
    """Minimal RFC 6455 client (text frames from the server only), timestamping each event."""

    def __init__(self, host: str, port: int, path: str, cookie: str) -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nOrigin: http://{host}:{port}\r\n"
                f"Cookie: {cookie}\r\n\r\n"
            ).encode()
        )
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
                elif b0 & 0x0F == 0x9:
                    # Answer the server's keepalive ping (uvicorn pings every 20 s and closes a
                    # socket that does not answer): a client frame is masked.
                    mask = os.urandom(4)
                    masked = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
                    self.sock.sendall(bytes([0x8A, 0x80 | len(payload)]) + mask + masked)
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
    def __init__(
        self,
        *,
        tmp: Path,
        registry: Path,
        database_url: str | None,
        redis_url: str,
        web_workers: int = 1,
        worker_processes: int = 1,
    ) -> None:
        self.tmp = tmp
        self.web_workers = web_workers
        self.worker_processes = worker_processes
        self.port = free_port()
        # Production settings (DEBUG off: no per-query bookkeeping), as a deployment runs.
        self.env = {
            **os.environ,
            "DEBUG": "0",
            "RADTRIAGE_HTTPS": "0",  # plain HTTP on loopback: no TLS proxy in front
            "SECRET_KEY": uuid.uuid4().hex * 2,
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "REDIS_URL": redis_url,
            "RADTRIAGE_NAMESPACE": f"bench{uuid.uuid4().hex[:6]}",
            "MEDIA_ROOT": str(tmp / "media"),
            "RADTRIAGE_REGISTRY": str(registry),
            "DATABASE_URL": database_url or f"sqlite:///{tmp / 'bench.sqlite3'}",
            "PYTHONUNBUFFERED": "1",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "LOG_LEVEL": "WARNING",
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.roles: list[str] = []

    def manage(self, *args: str) -> str:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=REPO,
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            argv, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append(proc)
        self.roles.append(name)
        return proc

    def start(self) -> tuple[str, str]:
        self.manage("migrate", "--noinput")
        _, _, rest = self.manage("demo_admin", "--credentials-file", str(self.tmp / "admin.txt")).partition(
            "username "
        )
        username, _, password = rest.strip().partition("  password ")
        # The web process exactly as the Procfile (`make run`) starts it.
        self.spawn(
            "web",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(self.web_workers),
                "--no-proxy-headers",
                "web.asgi:application",
            ],
        )
        self.spawn(
            "worker",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker",
                "worker",
                "-Q",
                "interactive,maintenance,batch,reports",
                "--concurrency",
                str(self.worker_processes),
                "--prefetch-multiplier",
                "1",
                "-n",
                "bench@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                "INFO",
            ],
        )
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
        response = self.http.post(
            f"{base}/login/",
            data={
                "username": username,
                "password": password,
                "csrfmiddlewaretoken": self.http.cookies["csrftoken"],
            },
            headers={"Referer": f"{base}/login/"},
            allow_redirects=False,
        )
        if response.status_code != 302:
            raise RuntimeError("could not log in to the bench stack")
        self.finished: dict[int, float] = {}
        self.upload_seconds: list[float] = []
        self.bulk_upload_seconds: list[float] = []  # per image

    def twin(self) -> Client:
        """Another connection of the same logged-in user (one per uploading thread)."""
        twin = object.__new__(Client)
        twin.base, twin.condition = self.base, self.condition
        twin.http = requests.Session()
        twin.http.cookies.update(self.http.cookies)
        twin.finished, twin.upload_seconds = self.finished, self.upload_seconds
        twin.bulk_upload_seconds = self.bulk_upload_seconds
        return twin

    def cookie(self) -> str:
        return f"sessionid={self.http.cookies['sessionid']}"

    def upload(self, data: bytes, index: int) -> int:
        start = time.perf_counter()
        response = self.http.post(
            f"{self.base}/api/uploads/",
            files={"file": (f"bench-{index}.dcm", data)},
            data={"conditions": self.condition},
            headers={"X-CSRFToken": self.http.cookies["csrftoken"], "Referer": self.base + "/"},
        )
        if response.status_code != 201:
            raise RuntimeError(f"upload failed: {response.status_code} {response.text[:300]}")
        self.upload_seconds.append(time.perf_counter() - start)
        return int(response.json()["image"]["analyses"][0]["id"])

    def upload_many(self, files: list[bytes], first_index: int) -> list[int]:
        start = time.perf_counter()
        response = self.http.post(
            f"{self.base}/api/uploads/batch/",
            files=[("files", (f"bench-{first_index + i}.dcm", data)) for i, data in enumerate(files)],
            data={"conditions": self.condition},
            headers={"X-CSRFToken": self.http.cookies["csrftoken"], "Referer": self.base + "/"},
        )
        if response.status_code != 201:
            raise RuntimeError(f"bulk upload failed: {response.status_code} {response.text[:300]}")
        self.bulk_upload_seconds.append((time.perf_counter() - start) / len(files))
        return [int(a["id"]) for r in response.json()["results"] for a in r["analyses"]]

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
