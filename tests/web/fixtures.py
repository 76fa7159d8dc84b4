"""Fixtures shared by tests/web and tests/worker: real users, real files, a tiny real Keras
model in a tiny registry, and real Celery worker / beat / Redis subprocesses."""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
TINY_SIZE = 64


# --------------------------------------------------------------------------- files


def dicom_bytes(
    *,
    patient_id: str = "MRN-1001",
    patient_name: str = "Doe^Jane",
    study_uid: str | None = None,
    sop_uid: str | None = None,
    body_part: str = "CHEST",
    modality: str = "DX",
    accession: str = "ACC-1",
    size: int = 96,
    seed: int = 0,
    birth_date: str = "19700101",
    pixel_spacing: tuple[float, float] | None = None,
    spacing_tag: str = "PixelSpacing",
    study_date: str = "20261125",
) -> bytes:
    """A small, standard-conformant uncompressed DICOM radiograph (with `spacing_tag` set to
    `pixel_spacing`, row then column, in mm, when given)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 4096, size=(size, size), dtype=np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("upload.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = birth_date
    ds.PatientSex = "F"
    ds.AccessionNumber = accession
    ds.StudyDate = study_date
    ds.StudyDescription = "XR CHEST PA"
    ds.Modality = modality
    ds.BodyPartExamined = body_part
    ds.ViewPosition = "PA"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    if pixel_spacing is not None:
        setattr(ds, spacing_tag, [f"{v:g}" for v in pixel_spacing])
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def png_bytes(*, size: int = 80, seed: int = 1) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, size=(size, size), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def upload(client: Any, data: bytes, name: str = "xray.dcm", **fields: Any) -> Any:
    from django.core.files.uploadedfile import SimpleUploadedFile

    return client.post(
        "/api/uploads/", {"file": SimpleUploadedFile(name, data), **fields}, format="multipart"
    )


def media_files() -> list[Path]:
    """The stored files (images, thumbnails, heat maps...), not the uploads' journals (in a
    test inside one transaction, its commit, which removes them, never comes)."""
    from django.conf import settings

    from web.clinical.files import UPLOAD_JOURNALS

    root = Path(settings.MEDIA_ROOT)
    return sorted(
        p for p in root.rglob("*") if p.is_file() and UPLOAD_JOURNALS not in p.relative_to(root).parts
    )


def stored_state() -> dict[str, Any]:
    """What a refused file must not change: every row an upload writes, and the media files."""
    from web.clinical.models import Analysis, Image, Patient, Study, UploadConflict

    return {
        "patients": Patient.objects.count(),
        "studies": Study.objects.count(),
        "images": Image.objects.count(),
        "analyses": Analysis.objects.count(),
        "conflicts": UploadConflict.objects.count(),
        "files": media_files(),
    }


def uvicorn_argv(port: int) -> list[str]:
    """The web process as `make run` starts it, on this port."""
    host = ["--host", "127.0.0.1", "--port", str(port)]
    return [sys.executable, "-m", "uvicorn", *host, "--no-proxy-headers", "web.asgi:application"]


def procfile_service(name: str, env: dict[str, str], log_dir: Path) -> Service:
    """A process exactly as `make run` starts it: its Procfile line, run by a shell (honcho's
    way), with env supplying PYTHON and the RADTRIAGE_* host and port variables."""
    line = next(x for x in (REPO / "Procfile").read_text().splitlines() if x.startswith(f"{name}:"))
    command = line.removeprefix(f"{name}:").strip()
    return Service(name, ["sh", "-c", f"exec {command}"], {"PYTHON": sys.executable, **env}, log_dir)


def wait_for(
    predicate: Callable[[], Any], *, timeout: float, interval: float = 0.1, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- people


def web_login_user(user_model: Any, username: str, password: str) -> Any:
    """A user who logs in with a password on a web server started as a subprocess: hashed with
    the production hasher, which that server knows (the test process hashes with MD5, see
    tests/conftest.py)."""
    user = user_model.objects.create_user(username)
    user.password = _production_hash(password)
    user.save(update_fields=["password"])
    return user


@functools.cache
def _production_hash(password: str) -> str:
    """One PBKDF2 hash per password per session (a million rounds: ~0.3 s each, and the
    browser tests make the same few users again and again); the server checks it the same."""
    from django.contrib.auth.hashers import make_password

    return make_password(password, hasher="pbkdf2_sha256")


def with_role(user: Any, *roles: str) -> Any:
    """Put `user` in role groups (web.access.Role values). The migration makes them; a
    transactional test's flush removes them, hence get_or_create."""
    from django.contrib.auth.models import Group

    user.groups.add(*(Group.objects.get_or_create(name=role)[0] for role in roles))
    return user


@pytest.fixture()
def radiologist(db: Any, django_user_model: Any) -> Any:
    return with_role(
        django_user_model.objects.create_user("dr.house", password="pw-radiologist"), "radiologist"
    )


@pytest.fixture()
def api(radiologist: Any) -> Any:
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_login(radiologist)
    return client


def session_cookie_header(client: Any) -> tuple[bytes, bytes]:
    return b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()


WS_ORIGIN = (b"origin", b"http://testserver")


# --------------------------------------------------------------------------- model registry


@pytest.fixture(scope="session")
def tiny_registry() -> Iterator[Path]:
    """registry.json with a tiny real Keras model for pneumonia and for fracture (with a limb
    population) and a missing artifact for cardiomegaly (so that condition runs the flagged
    placeholder)."""
    folder = Path(tempfile.mkdtemp(prefix="radtriage-registry-"))
    code = f"""
import keras
from core.registry import Registry, sha256_file
from pathlib import Path
folder = Path({str(folder)!r})
keras.utils.set_random_seed(0)
inp = keras.Input(({TINY_SIZE}, {TINY_SIZE}, 3), name="image")
x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_a")(inp)
x = keras.layers.MaxPooling2D(2)(x)
x = keras.layers.Conv2D(8, 3, padding="same", name="conv_last")(x)
x = keras.layers.Activation("relu", name="out_relu")(x)
x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
out = keras.layers.Dense(1, activation="sigmoid", name="probability")(x)
(folder / "models").mkdir()
artifact = folder / "models" / "tiny.keras"
keras.Model(inp, out).save(artifact)
# The same network with a head that always says yes (p ~ 0.998), for the flag rules.
always = keras.layers.Dense(1, activation="sigmoid", name="always_yes",
                            kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(6.0))
always_artifact = folder / "models" / "always-yes.keras"
keras.Model(inp, always(x)).save(always_artifact)
doc = {{"schema_version": 1, "active_models": {{}}, "models": []}}
reg = Registry.from_document(doc, path=folder / "registry.json")
base = {{"architecture": "mobilenetv2", "input_size": [{TINY_SIZE}, {TINY_SIZE}],
         "class_labels": ["normal", "abnormal"], "threshold": 0.5, "status": "validated"}}
reg.register({{**base, "id": "pneumonia-tiny-test", "condition": "pneumonia",
               "artifact": "models/tiny.keras", "sha256": sha256_file(artifact)}})
reg.register({{**base, "id": "cardiomegaly-missing", "condition": "cardiomegaly",
               "artifact": "models/missing.keras"}})
# A limb model with a declared population (no population.npz: no feature distance), so the
# population check runs on fracture results.
reg.register({{**base, "id": "fracture-tiny-test", "condition": "fracture",
               "artifact": "models/tiny.keras", "sha256": sha256_file(artifact), "population": {{
    "region": "limb", "description": "Limb films of adults and children",
    "recogniser_classes": ["limb"], "views": ["frontal", "lateral", "oblique"], "age_group": "both"}}}})
# The fixture's own starting choice (no artifact check: one model here is missing on purpose).
reg.set_active("pneumonia-tiny-test")
reg.set_active("cardiomegaly-missing")
reg.set_active("fracture-tiny-test")
yes = {{**base, "condition": "pneumonia", "artifact": "models/always-yes.keras",
        "sha256": sha256_file(always_artifact)}}
reg.register({{**yes, "id": "pneumonia-always-yes-experimental", "status": "experimental",
               "experimental_reason": "Says yes to everything."}})
reg.register({{**yes, "id": "pneumonia-always-yes-children", "population": {{
    "region": "chest", "description": "Children's frontal chest films (ages 1-5)",
    "recogniser_classes": ["chest_child"], "views": ["PA", "AP"], "age_group": "children",
    "age_range_years": [1, 5]}}}})
reg.save()
"""
    # A subprocess keeps TensorFlow out of the test process (the web side must never need it).
    subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        check=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    path = folder / "registry.json"
    assert json.loads(path.read_text())["active_models"]["pneumonia"] == "pneumonia-tiny-test"
    yield path
    shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def db_url_for_services() -> str:
    from django.db import connection

    s = connection.settings_dict
    user = s.get("USER") or "postgres"
    auth = f"{user}:{s['PASSWORD']}" if s.get("PASSWORD") else user
    return f"postgres://{auth}@{s.get('HOST') or '127.0.0.1'}:{s.get('PORT') or 5432}/{s['NAME']}"


class Service:
    """A subprocess in its own process group, logging to a file we can read."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.log_path = log_dir / f"{name}-{int(time.time() * 1000)}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, ready_text: str | None = None, timeout: float = 60) -> Service:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            self.argv, cwd=REPO, env=self.env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        if ready_text:
            wait_for(
                lambda: ready_text in self.log() or self.proc.poll() is not None,
                timeout=timeout,
                what=f"{self.name} to start",
            )
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited at start:\n{self.log()[-4000:]}")
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def children(self) -> list[int]:
        assert self.proc is not None
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def kill(self) -> None:
        """SIGKILL the whole process group: no cleanup, no ack, like a power cut."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()


def service_env(**overrides: str) -> dict[str, str]:
    from django.conf import settings

    env = {
        **os.environ,
        "DATABASE_URL": db_url_for_services(),
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "PYTHONUNBUFFERED": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "DB_CONN_MAX_AGE": "0",
    }
    env.update(overrides)
    return env


def celery_worker(name: str, env: dict[str, str], log_dir: Path) -> Service:
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker",
        "worker",
        "-Q",
        "interactive,maintenance,batch,reports",
        "--concurrency",
        "1",
        "--pool",
        "prefork",
        "-n",
        f"{name}@%h",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--loglevel",
        "INFO",
    ]
    return Service(name, argv, env, log_dir)


def celery_beat(env: dict[str, str], log_dir: Path) -> Service:
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker",
        "beat",
        "--loglevel",
        "INFO",
        "--schedule",
        str(log_dir / f"beat-schedule-{time.time_ns()}"),
    ]
    return Service("beat", argv, env, log_dir)


def redis_server(port: int, log_dir: Path) -> Service:
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return Service(f"redis-{port}", argv, dict(os.environ), log_dir)


@pytest.fixture(scope="session")
def service_logs() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="radtriage-services-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


# Node names of the session's shared worker once started: every transactional test's
# teardown waits until it holds no job (tests/conftest.py).
SHARED_WORKER_NODES: list[str] = []


def drain_shared_worker(nodes: list[str], timeout: float = 120) -> None:
    """Empty the session's queues, then wait until the given workers run and hold no job."""
    from django.conf import settings

    from web.clinical.dispatch import celery_app

    app = celery_app()
    queues = (
        settings.QUEUE_INTERACTIVE,
        settings.QUEUE_BATCH,
        settings.QUEUE_MAINTENANCE,
        settings.QUEUE_REPORTS,
    )
    with app.connection_for_write() as connection:
        for queue in queues:
            connection.default_channel.queue_purge(queue)
    inspector = app.control.inspect(destination=nodes, timeout=2.0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = [inspector.active(), inspector.reserved()]
        if all(replies is not None and len(replies) == len(nodes) for replies in held) and not any(
            jobs for replies in held for jobs in replies.values()
        ):
            return
        time.sleep(0.2)
    raise AssertionError(f"the shared worker still holds a job after {timeout:.0f} s: {held}")


@pytest.fixture(scope="session")
def live_worker(
    django_db_setup: Any, django_db_blocker: Any, tiny_registry: Path, service_logs: Path
) -> Iterator[Service]:
    """One real Celery worker for the session, on the test database, the session's Redis
    namespace and the tiny registry."""
    with django_db_blocker.unblock():
        env = service_env(RADTRIAGE_REGISTRY=str(tiny_registry))
    worker = celery_worker("live", env, service_logs).start(ready_text="ready.", timeout=90)
    SHARED_WORKER_NODES.append(f"live@{socket.gethostname()}")
    yield worker
    SHARED_WORKER_NODES.clear()
    worker.stop()
    if os.environ.get("RADTRIAGE_SHOW_WORKER_LOG"):
        print(worker.log())


@pytest.fixture()
def private_redis(service_logs: Path) -> Iterator[tuple[Service, int]]:
    """A throwaway redis-server of our own (never the machine's shared one), free to kill."""
    port = free_port()
    server = redis_server(port, service_logs).start(ready_text="Ready to accept connections", timeout=20)
    yield server, port
    server.kill()


@pytest.fixture()
def broker_switch() -> Iterator[Callable[[str], None]]:
    """Point this test process's Celery producer at another broker URL (restored after)."""
    from kombu import pools

    from web.clinical.dispatch import celery_app

    app = celery_app()  # the web's producer; a worker started in-process shares it
    original = app.conf.broker_url

    def switch(url: str) -> None:
        app.pool.force_close_all()
        app._pool = None
        app.amqp._producer_pool = None
        pools.reset()  # kombu caches producer pools per connection, process-wide
        app.conf.broker_url = url

    yield switch
    switch(original)


# --------------------------------------------------------------------------- browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def live_web_server(live_worker: Service, service_logs: Path) -> Iterator[tuple[Service, str]]:
    """The web process as `make run` starts it (uvicorn), once for the session, beside the
    session's worker (its database, MEDIA_ROOT and Redis namespace). It keeps nothing of a test
    between tests: sessions, login throttling and rows are in the database that each
    transactional test resets; pages and sockets belong to that test's browser."""
    port = free_port()
    env = service_env(MEDIA_ROOT=live_worker.env["MEDIA_ROOT"])
    server = Service("uvicorn", uvicorn_argv(port), env, service_logs)
    server.start(ready_text="Uvicorn running on", timeout=60)
    yield server, f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture()
def live_server_url(live_web_server: tuple[Service, str]) -> str:
    """The session's web server. Its files are the session's MEDIA_ROOT: a test that uses it
    keeps that one (no isolated_media of its own), so what it stores is what the server reads."""
    from django.conf import settings

    server, url = live_web_server
    assert server.proc is not None
    if server.proc.poll() is not None:
        raise AssertionError(f"the session's web server has exited:\n{server.log()[-4000:]}")
    assert str(settings.MEDIA_ROOT) == server.env["MEDIA_ROOT"], "keep the session's MEDIA_ROOT here"
    return url


@pytest.fixture()
def chromium() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright, for one test. Not shared across tests: while
    Playwright runs, its event loop runs in this thread, and Django then refuses the ORM here
    (SynchronousOnlyOperation): in the next test's fixtures and in the database reset after
    each test. Launching costs under a second; each page gets a fresh context anyway."""
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def new_page(browser: Any, *, width: int = 1440, height: int = 900, timeout_ms: int = 60_000) -> Any:
    """A page in a context of its own (its own cookies: one user each) at this screen size."""
    page = browser.new_context(viewport={"width": width, "height": height}).new_page()
    page.set_default_timeout(timeout_ms)
    return page


@pytest.fixture()
def browser_page(chromium: Any) -> Any:
    """One page at Playwright's default size (1280x720); tests that need a screen size set it."""
    page = chromium.new_page()
    page.set_default_timeout(60_000)
    return page


def log_in(
    page: Any, base_url: str, username: str, password: str, *, next_path: str = "", admin: bool = False
) -> None:
    """Fill in and send the login form (the admin's own with admin=True), then to `next_path`."""
    login = "/admin/login/" if admin else "/login/"
    page.goto(f"{base_url}{login}" + (f"?next={next_path}" if next_path else ""))
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("input[type=submit]" if admin else "button[type=submit]")
