"""The web process (uvicorn, as deployed: no DB_CONN_MAX_AGE set) does not hold a database
connection per request it has answered. Under ASGI each request runs in a thread of its own, so
a persistent connection is never reused, only left open; under load (bench/load.py, 50 clients)
the web processes ran PostgreSQL out of connections and answered HTTP 500."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.web.fixtures import Service, db_url_for_services, free_port, service_env, uvicorn_argv

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

REQUESTS = 30


def open_connections(application_name: str) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [application_name]
        )
        return int(cursor.fetchone()[0])


def test_the_web_process_does_not_keep_a_database_connection_per_request(service_logs: Path) -> None:
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("counts PostgreSQL's connections")
    name = f"rt-web-{uuid.uuid4().hex[:8]}"
    env = service_env(DATABASE_URL=f"{db_url_for_services()}?application_name={name}")
    env.pop("DB_CONN_MAX_AGE")  # the deployment's default
    port = free_port()
    argv = uvicorn_argv(port)
    server = Service("uvicorn", argv, env, service_logs).start(ready_text="Uvicorn running on", timeout=60)
    try:
        answers: list[Any] = [
            requests.get(f"http://127.0.0.1:{port}/healthz/", timeout=30) for _ in range(REQUESTS)
        ]
        held = open_connections(name)
    finally:
        server.stop()

    assert all(a.json()["database"] == "ok" for a in answers), answers[-1].text
    # One at a time, so at most one request's connection may still be closing.
    assert held <= 1, f"{held} connections held after {REQUESTS} requests one at a time"
