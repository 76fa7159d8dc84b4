"""SQLite is the embedded default (`make run` with no DATABASE_URL): the web process and the
worker write to it at the same time, which must wait for the lock, never fail."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Read then write inside one transaction, like an upload (find the image, insert the rows):
# the pattern that fails at once with "database is locked" on SQLite's default settings.
WRITER = """
import django, sys
django.setup()
from django.db import transaction
from web.clinical.models import Patient
for i in range(60):
    with transaction.atomic():
        Patient.objects.filter(patient_id__startswith=sys.argv[1]).count()
        Patient.objects.create(patient_id=f"{sys.argv[1]}-{i}")
print("ok")
"""


def test_two_processes_writing_at_once_both_finish(tmp_path) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'radtriage.sqlite3'}",
        "DJANGO_SETTINGS_MODULE": "web.settings",
        "DEBUG": "1",
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, name],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("web", "worker", "beat")
    ]
    results = [w.communicate(timeout=120) for w in writers]
    for (out, err), writer in zip(results, writers, strict=True):
        assert writer.returncode == 0 and out.strip() == "ok", err[-2000:]
    count = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from web.clinical.models import "
            "Patient; print(Patient.objects.count())",
        ],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    assert count == "180"  # nothing lost
