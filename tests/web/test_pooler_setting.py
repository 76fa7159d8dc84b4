"""Behind PgBouncer in transaction mode a server-side cursor does not survive: the pooler may
hand the next FETCH to another server connection. DB_DISABLE_SERVER_SIDE_CURSORS=1 makes
Django read iterator() queries without one; without it PostgreSQL's cursor is used."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.web.fixtures import db_url_for_services

pytestmark = pytest.mark.django_db(transaction=True)

REPO = Path(__file__).resolve().parents[2]

# The cursors this session holds open while it is half-way through an iterator().
OPEN_CURSORS_MID_ITERATION = """
import django
django.setup()
from django.db import connection
from web.clinical.models import Patient
for _ in Patient.objects.order_by("pk").iterator(chunk_size=1):
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_cursors")
        print(cursor.fetchone()[0])
    break
"""


def open_cursors(**env: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", OPEN_CURSORS_MID_ITERATION],
        cwd=REPO,
        env={
            **os.environ,
            "DATABASE_URL": db_url_for_services(),
            "DJANGO_SETTINGS_MODULE": "web.settings",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


def test_behind_a_transaction_pooler_iterator_reads_use_no_server_side_cursor() -> None:
    from django.db import connection

    from web.clinical.models import Patient

    if connection.vendor != "postgresql":
        pytest.skip("server-side cursors are PostgreSQL's")
    Patient.objects.bulk_create([Patient(patient_id=f"POOL-{i}") for i in range(3)])

    assert open_cursors(DB_DISABLE_SERVER_SIDE_CURSORS="0") == 1
    assert open_cursors(DB_DISABLE_SERVER_SIDE_CURSORS="1") == 0
