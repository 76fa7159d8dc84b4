"""DICOM ingest throughput: C-STORE (storescu -> `manage.py dicom_listener`) and STOW-RS (HTTP
-> the web process's /dicom-web/studies), each -> worker, vs the raw engine.

Starts its own listener and Celery worker (as the Procfile does) on a scratch PostgreSQL
database and media folder, generates --n chest DX instances (--studies studies, 512 px, 12 bit),
sends them all with dcmtk's storescu in one association, and prints:

1. received: instances/s from storescu's start to its exit (every C-STORE answered only after
   the instance is stored: decode, recogniser, thumbnail, rows, file); then the same files
   again (their rows deleted first) by STOW-RS, --stow-batch instances per request, one client;
2. analysed: seconds from storescu's start (the worker's models already loaded by one
   instance sent before) until every analysis of those instances finished
   (the listener sends an association's analyses in mini-batches of RADTRIAGE_DICOM_BATCH_SIZE);
3. raw: core.analysis.analyze_xrays on the same decoded images, every chest condition, in
   batches of 16, in this process (the engine alone, no platform), in the same run.

Asserts nothing.

    .venv/bin/python bench/dicom_ingest.py [--n 200] [--studies 10] [--registry registry.json]
        [--database-url postgres://postgres@127.0.0.1:5432/bench_dicom]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402


def chest_dicom(*, seed: int, study_uid: str, patient_id: str, size: int = 512) -> bytes:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    lungs = np.exp(-(((x - size * 0.32) / (size / 7)) ** 2 + ((y - size / 2) / (size / 3.5)) ** 2))
    lungs += np.exp(-(((x - size * 0.68) / (size / 7)) ** 2 + ((y - size / 2) / (size / 3.5)) ** 2))
    pixels = np.clip(2600 - 1500 * lungs + rng.normal(0, 60, (size, size)), 0, 4095).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.PatientID, ds.PatientName, ds.PatientSex, ds.PatientBirthDate = (
        patient_id,
        "Bench^Patient",
        "F",
        "19700101",
    )
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.StudyDate, ds.AccessionNumber = "20261201", f"B-{study_uid[-8:]}"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_database(url: str) -> None:
    import psycopg

    base, _, name = url.rpartition("/")
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def wait_for_text(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path.name} never said {text!r}; see {path}")
        time.sleep(0.2)


def bench_raw(files: list[Path], *, registry: Path) -> float:
    """Analyses per second of the engine alone: every chest condition, batches of 16."""
    from core.analysis import analyze_xrays
    from core.conditions import conditions_for_body_part
    from core.imaging import load_xray
    from core.model_manager import get_manager

    manager = get_manager(registry)
    xrays = [load_xray(path.read_bytes()) for path in files]
    conditions = conditions_for_body_part("CHEST")
    for condition in conditions:  # load each model once, outside the timing
        analyze_xrays(xrays[:2], condition=condition, manager=manager, batch_size=16)
    start = time.perf_counter()
    for condition in conditions:
        analyze_xrays(xrays, condition=condition, manager=manager, batch_size=16)
    return len(xrays) * len(conditions) / (time.perf_counter() - start)


def stow_session() -> Any:
    """A requests session with a technologist's API token (made in the scratch database)."""
    import requests
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from rest_framework.authtoken.models import Token

    user, _ = get_user_model().objects.get_or_create(username="bench.stow")
    user.groups.add(Group.objects.get(name="technologist"))
    token, _ = Token.objects.get_or_create(user=user)
    session = requests.Session()
    session.headers["Authorization"] = f"Token {token.key}"
    return session


def stow(session: Any, url: str, files: list[Path]) -> Any:
    """One STOW-RS request (multipart/related, one instance per part)."""
    boundary = uuid.uuid4().hex
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    body = b"".join(head + path.read_bytes() + b"\r\n" for path in files) + f"--{boundary}--\r\n".encode()
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return session.post(url, data=body, headers={"Content-Type": content_type}, timeout=600)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--registry", type=Path, default=REPO / "registry.json")
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/bench_dicom")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    parser.add_argument("--stow-batch", type=int, default=20, help="instances per STOW-RS request")
    args = parser.parse_args()
    if not shutil.which("storescu"):
        sys.exit("dcmtk's storescu is missing: apt-get install dcmtk (scripts/test-prereqs.sh)")

    tmp = Path(tempfile.mkdtemp(prefix="bench-dicom-"))
    ensure_database(args.database_url)
    env = {
        **os.environ,
        "DATABASE_URL": args.database_url,
        "REDIS_URL": args.redis_url,
        "RADTRIAGE_NAMESPACE": f"bench{uuid.uuid4().hex[:6]}",
        "MEDIA_ROOT": str(tmp / "media"),
        "RADTRIAGE_REGISTRY": str(args.registry),
        "PYTHONUNBUFFERED": "1",
        "LOG_LEVEL": "WARNING",
    }
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "REDIS_URL", "MEDIA_ROOT", "RADTRIAGE_NAMESPACE")})
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "web.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from pydicom.uid import generate_uid

    from web.clinical.models import Analysis, Image, Patient, Study

    Study.objects.filter(patient__patient_id__regex=r"^(BENCH|WARM)-").delete()  # a scratch database
    Patient.objects.filter(patient_id__regex=r"^(BENCH|WARM)-").delete()

    folder = tmp / "send"
    folder.mkdir()
    studies = [generate_uid() for _ in range(args.studies)]
    files = []
    for index in range(args.n):
        path = folder / f"{index:04d}.dcm"
        study = index % args.studies
        path.write_bytes(chest_dicom(seed=index, study_uid=studies[study], patient_id=f"BENCH-{study}"))
        files.append(path)

    raw_before = bench_raw(files[:64], registry=args.registry)

    procs = []
    port, web_port = free_port(), free_port()
    for name, argv in (
        (
            "web",  # as the Procfile starts it
            [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(web_port)]
            + ["--no-proxy-headers", "web.asgi:application"],
        ),
        (
            "listener",
            [sys.executable, "manage.py", "dicom_listener", "--host", "127.0.0.1", "--port", str(port)],
        ),
        (
            "worker",
            [sys.executable, "-m", "celery", "-A", "worker", "worker"]
            + ["-Q", "interactive,maintenance,batch,reports"]
            + [
                "--concurrency",
                "1",
                "--prefetch-multiplier",
                "1",
                "-n",
                "bench-dicom@%h",
                "--loglevel",
                "INFO",
            ],
        ),
    ):
        log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        procs.append(
            subprocess.Popen(
                argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        )
    try:
        wait_for_text(tmp / "listener.log", "DICOM listener ready", 60)
        wait_for_text(tmp / "worker.log", "ready.", 120)
        wait_for_text(tmp / "web.log", "Uvicorn running on", 60)
        # One instance first, outside the timing: the worker loads its models (as raw does).
        warm = tmp / "warm.dcm"
        warm.write_bytes(chest_dicom(seed=10**6, study_uid=generate_uid(), patient_id="WARM-1"))
        subprocess.run(["storescu", "-aec", "RADTRIAGE", "127.0.0.1", str(port), str(warm)], check=True)
        while (
            Analysis.objects.filter(state__in=["queued", "running"]).exists() or not Analysis.objects.exists()
        ):
            time.sleep(0.25)

        def measure(send: Callable[[], None]) -> tuple[int, float, int, float, int]:
            """(stored, seconds to receive, analyses, seconds until all analysed, failed)."""
            started = time.perf_counter()
            send()
            received_s = time.perf_counter() - started
            stored = Image.objects.filter(study__patient__patient_id__startswith="BENCH-").count()
            analyses = Analysis.objects.filter(image__study__patient__patient_id__startswith="BENCH-")
            total = analyses.count()
            while analyses.filter(state__in=["queued", "running"]).exists():
                time.sleep(0.25)
            analysed_s = time.perf_counter() - started
            return stored, received_s, total, analysed_s, analyses.filter(state="failed").count()

        def by_storescu() -> None:
            sent = subprocess.run(
                ["storescu", "-aet", "BENCH", "-aec", "RADTRIAGE", "127.0.0.1", str(port), *map(str, files)],
                capture_output=True,
                text=True,
            )
            if sent.returncode != 0:
                sys.exit(f"storescu failed: {sent.stderr[-2000:]}")

        def by_stow() -> None:
            session = stow_session()
            for start in range(0, len(files), args.stow_batch):
                batch = files[start : start + args.stow_batch]
                answer = stow(session, f"http://127.0.0.1:{web_port}/dicom-web/studies", batch)
                if answer.status_code != 200:
                    sys.exit(f"STOW-RS failed: {answer.status_code} {answer.text[:2000]}")

        figures = {}
        ways = (
            ("C-STORE (storescu, one association)", by_storescu),
            (f"STOW-RS ({args.stow_batch} instances per request, one client)", by_stow),
        )
        for way, send in ways:
            Study.objects.filter(patient__patient_id__startswith="BENCH-").delete()  # the same files again
            figures[way] = measure(send)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)
    raw_after = bench_raw(files[:64], registry=args.registry)
    raw = (raw_before + raw_after) / 2

    print(f"instances: {args.n} DX 512x512 12-bit in {args.studies} studies, the same files each way")
    for way, (stored, received_s, total, analysed_s, failed) in figures.items():
        print(f"{way}:")
        print(f"  received: {stored} stored in {received_s:.1f} s = {stored / received_s:.1f} instances/s")
        print(
            f"  analysed: {total} analyses ({failed} failed) all finished {analysed_s:.1f} s after the "
            f"first instance = {total / analysed_s:.1f} analyses/s, {stored / analysed_s:.1f} instances/s"
        )
        print(f"  platform / raw: {100 * (total / analysed_s) / raw:.0f} %")
    print(f"raw core (analyze_xrays, batches of 16, same images): {raw:.1f} analyses/s")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
