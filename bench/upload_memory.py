"""How much memory the web process needs for a multi-file upload: its peak resident memory
(VmHWM, reset just before the upload) above what it held before, for 4 files of 150 MB by
default, of each kind a client may send: DICOMs over the pixel limit (RADTRIAGE_MAX_PIXELS; at
150 MB a 16-bit image is over the default 60 million, at any size over the 1 million set here),
files that are no image at all, and DICOMs within the limit (raised to let them in).

    .venv/bin/python bench/upload_memory.py [--files 4] [--megabytes 150] [--kinds ...]

Starts its own web process (uvicorn, as the Procfile does) on a scratch SQLite database and
media folder; no worker is needed (the analyses stay queued). Linux only (/proc)."""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import requests  # noqa: E402

from bench.stack import free_port, wait_port  # noqa: E402


def big_dicom(megabytes: int, seed: int) -> bytes:
    """An uncompressed 16-bit DICOM radiograph of about this size (a square image)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    side = int((megabytes * 2**20 / 2) ** 0.5)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("big.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality, ds.BodyPartExamined = (
        f"MEM-{seed}",
        "Bench^Memory",
        "DX",
        "CHEST",
    )
    ds.ViewPosition = "PA"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = side
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    rng = np.random.default_rng(seed)
    ds.PixelData = rng.integers(0, 4096, size=(side, side), dtype=np.uint16).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_growth_mb(pid: int, send: callable) -> tuple[float, float, int]:
    """(peak growth, growth after, HTTP status) of process `pid` while `send()` runs."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = status_kb(pid, "VmRSS")
    status = send()
    time.sleep(0.5)
    return (status_kb(pid, "VmHWM") - before) / 1024, (status_kb(pid, "VmRSS") - before) / 1024, status


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--megabytes", type=int, default=150)
    parser.add_argument(
        "--kinds", nargs="+", default=["over-the-pixel-limit", "not-an-image", "within-the-limit"]
    )
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="radtriage-upload-memory-"))
    port = free_port()
    env = {
        **os.environ,
        "DEBUG": "1",
        "DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite3'}",
        "MEDIA_ROOT": str(tmp / "media"),
        "RADTRIAGE_NAMESPACE": f"mem{uuid.uuid4().hex[:6]}",
        "LOG_LEVEL": "WARNING",
        "PYTHON": sys.executable,
        "RADTRIAGE_HOST": "127.0.0.1",
        "RADTRIAGE_PORT": str(port),
        # Files of this size are refused by the default limit (200 MiB is above it): let them in.
        "RADTRIAGE_MAX_UPLOAD_BYTES": str(max(200, 2 * args.megabytes) * 2**20),
    }
    procfile = (REPO / "Procfile").read_text().splitlines()
    command = next(line for line in procfile if line.startswith("web:")).removeprefix("web:").strip()
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c",
         "from django.contrib.auth import get_user_model; from django.contrib.auth.models import Group;"
         "u = get_user_model().objects.create_user('bench', password='bench-memory-pw');"
         "u.groups.add(Group.objects.get_or_create(name='technologist')[0])"],
        cwd=REPO, env=env, check=True, capture_output=True,
    )  # fmt: skip
    print(f"{args.files} files x {args.megabytes} MB per upload, one request each (POST /api/uploads/batch/)")
    for kind in args.kinds:
        run_env = dict(env)
        run_env["RADTRIAGE_MAX_PIXELS"] = str(10**9 if kind == "within-the-limit" else 10**6)
        log = open(tmp / f"web-{kind}.log", "wb")  # noqa: SIM115 - closed below
        web = subprocess.Popen(["sh", "-c", f"exec {command}"], cwd=REPO, env=run_env, stdout=log, stderr=log)
        try:
            wait_port(port, 90)
            http = requests.Session()
            token = http.post(
                f"http://127.0.0.1:{port}/api/auth/token/",
                data={"username": "bench", "password": "bench-memory-pw"},
            ).json()["token"]
            http.headers["Authorization"] = f"Token {token}"
            if kind == "not-an-image":
                files = [os.urandom(args.megabytes * 2**20) for _ in range(args.files)]
            else:
                files = [big_dicom(args.megabytes, seed) for seed in range(args.files)]

            def send(files: list[bytes] = files, http: requests.Session = http) -> int:
                parts = [("files", (f"f{i}.dcm", data)) for i, data in enumerate(files)]
                return http.post(
                    f"http://127.0.0.1:{port}/api/uploads/batch/", files=parts, timeout=600
                ).status_code

            peak, after, status = peak_growth_mb(web.pid, send)
            print(f"  {kind:22s} HTTP {status}   peak +{peak:6.0f} MB   after +{after:5.0f} MB")
        finally:
            web.terminate()
            web.wait(timeout=30)
            log.close()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
