"""A multi-file upload streams to disk: the web process (uvicorn, as the Procfile starts it)
needs a few megabytes for it, not its files' size. Measured as the process's peak resident
memory (VmHWM, reset just before the request) above what it held before. Files refused from
their header (more pixels than the limit) or their first bytes (no image) are never read whole,
and a refused file's bytes are not kept until the response. At full scale (4 x 150 MB):
bench/upload_memory.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from bench.upload_memory import big_dicom, peak_growth_mb
from tests.web.fixtures import free_port, procfile_service, service_env, web_login_user, with_role

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

FILES, MEGABYTES = 4, 20
BOUND_MB = 30  # 4 x 20 MB sent; before: +100 MB and more (each file read whole, refused ones kept)
PASSWORD = "correct horse battery staple"


@pytest.fixture()
def web(service_logs: Path, django_user_model: Any) -> Iterator[tuple[int, requests.Session]]:
    with_role(web_login_user(django_user_model, "tech.mem", PASSWORD), "technologist")
    port = free_port()
    # A 20 MB radiograph (10 million pixels) is over a 1-million-pixel limit, as a 150 MB one
    # is over the default 60 million.
    env = service_env(RADTRIAGE_PORT=str(port), RADTRIAGE_MAX_PIXELS="1000000")
    server = procfile_service("web", env, service_logs).start(ready_text="Uvicorn running on", timeout=90)
    assert server.proc is not None
    http = requests.Session()
    url = f"http://127.0.0.1:{port}"
    token = http.post(
        f"{url}/api/auth/token/", data={"username": "tech.mem", "password": PASSWORD}, timeout=60
    )
    http.headers["Authorization"] = f"Token {token.json()['token']}"
    http.url = url  # type: ignore[attr-defined]
    yield server.proc.pid, http
    server.stop()


@pytest.mark.parametrize(
    ("kind", "refusal"),
    [("over the pixel limit", "too large to analyse safely"), ("not an image", "not an X-ray image")],
)
def test_a_multi_file_upload_needs_megabytes_not_its_files_size(web, kind: str, refusal: str) -> None:
    pid, http = web
    if kind == "not an image":
        files = [os.urandom(MEGABYTES * 2**20) for _ in range(FILES)]
    else:
        files = [big_dicom(MEGABYTES, seed) for seed in range(FILES)]
    answers: list[requests.Response] = []

    def send() -> int:
        parts = [("files", (f"f{i}.dcm", data)) for i, data in enumerate(files)]
        answers.append(http.post(f"{http.url}/api/uploads/batch/", files=parts, timeout=300))
        return answers[-1].status_code

    peak, after, status = peak_growth_mb(pid, send)

    assert status == 400, answers[0].text[:500]
    assert [refusal in r["error"] for r in answers[0].json()["results"]] == [True] * FILES
    assert peak <= BOUND_MB, f"peak +{peak:.0f} MB for {FILES} x {MEGABYTES} MB"
    assert after <= BOUND_MB
