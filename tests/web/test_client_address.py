"""The client address (the login lockout's and the audit log's) comes from X-Forwarded-For only
when the request comes through a proxy named in RADTRIAGE_TRUSTED_PROXIES. Against the web
process exactly as the Procfile (`make run`) starts it, with 127.0.0.2 named as the proxy: a
client on 127.0.0.1 cannot dodge the lockout by writing a new address into each guess, and a
request through the proxy is recorded with the address the proxy forwarded."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from requests.adapters import HTTPAdapter

from tests.web.fixtures import (
    REPO,
    Service,
    dicom_bytes,
    free_port,
    procfile_service,
    service_env,
    web_login_user,
    with_role,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PROXY = "127.0.0.2"  # any 127.x address is this machine's: a second peer for the server to tell apart
PASSWORD = "correct horse battery staple"


class FromAddress(HTTPAdapter):
    """Connections from a chosen local address (the proxy's, here)."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def procfile_web_command() -> str:
    line = next(x for x in (REPO / "Procfile").read_text().splitlines() if x.startswith("web:"))
    return line.removeprefix("web:").strip()


@pytest.fixture()
def start_web(service_logs: Path, transactional_db: Any) -> Iterator[Callable[..., str]]:
    """Starts the Procfile's web command with 127.0.0.2 as the trusted proxy; returns its URL."""
    servers: list[Service] = []

    def start(**extra_env: str) -> str:
        port = free_port()
        env = service_env(
            RADTRIAGE_HOST="127.0.0.1",
            RADTRIAGE_PORT=str(port),
            RADTRIAGE_TRUSTED_PROXIES=PROXY,
            **extra_env,
        )
        server = procfile_service("web", env, service_logs)
        servers.append(server.start(ready_text="Uvicorn running on", timeout=90))
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop()


def session_from(address: str | None) -> requests.Session:
    session = requests.Session()
    if address:
        session.mount("http://", FromAddress(address))
    return session


def token_login(session: requests.Session, url: str, password: str, forwarded_for: str) -> requests.Response:
    return session.post(
        f"{url}/api/auth/token/",
        data={"username": "dr.quinn", "password": password},
        headers={"X-Forwarded-For": forwarded_for},
        timeout=60,
    )


def test_rotating_forwarded_for_from_an_untrusted_client_still_locks_the_account(
    start_web: Callable[..., str], django_user_model
) -> None:
    # uvicorn's own setting would believe anyone: the Procfile's command must not consult it.
    web = start_web(FORWARDED_ALLOW_IPS="*")
    web_login_user(django_user_model, "dr.quinn", PASSWORD)
    client = session_from(None)  # 127.0.0.1: not a trusted proxy
    wrong = [token_login(client, web, f"guess-{i}", f"198.51.100.{i + 1}").status_code for i in range(30)]
    right = token_login(client, web, PASSWORD, "198.51.100.200")

    assert 429 in wrong, wrong
    assert right.status_code == 429, right.text
    assert "Too many failed logins" in right.json()["error"]


def test_through_a_trusted_proxy_the_audit_row_and_the_lockout_use_the_forwarded_address(
    start_web: Callable[..., str], django_user_model
) -> None:
    from web.clinical.models import AuditEvent

    web = start_web()

    with_role(web_login_user(django_user_model, "dr.quinn", PASSWORD), "radiologist")
    proxy = session_from(PROXY)
    # One client behind the proxy guesses until it is locked out...
    for i in range(6):
        token_login(proxy, web, f"guess-{i}", "203.0.113.66")
    locked = token_login(proxy, web, PASSWORD, "203.0.113.66")
    # ...which locks that client, not everyone behind the same proxy.
    login = token_login(proxy, web, PASSWORD, "203.0.113.9")
    assert locked.status_code == 429, locked.text
    assert login.status_code == 200, login.text
    token = login.json()["token"]

    uploaded = proxy.post(
        f"{web}/api/uploads/",
        files={"file": ("chest.dcm", dicom_bytes(seed=4242))},
        headers={"Authorization": f"Token {token}", "X-Forwarded-For": "203.0.113.9"},
        timeout=60,
    )

    assert uploaded.status_code == 201, uploaded.text
    rows = list(AuditEvent.objects.filter(action="image.upload").values_list("ip_address", flat=True))
    assert rows == ["203.0.113.9"]


def test_every_command_line_that_starts_uvicorn_leaves_forwarded_headers_to_the_setting() -> None:
    # uvicorn believes X-Forwarded-For from 127.0.0.1 (or FORWARDED_ALLOW_IPS) unless told not to.
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    lines = {
        "Procfile": procfile_web_command(),
        "Dockerfile": next(x for x in (REPO / "Dockerfile").read_text().splitlines() if x.startswith("CMD")),
        "docker-compose.yml": compose["services"]["web"]["command"],
    }
    assert {name: "--no-proxy-headers" in line for name, line in lines.items()} == dict.fromkeys(lines, True)
    assert "RADTRIAGE_TRUSTED_PROXIES" in compose["x-app-env"]


def test_a_trusted_proxy_that_is_not_an_address_stops_start_up_with_a_clear_message() -> None:
    from django.core.exceptions import ImproperlyConfigured

    from web.settings import _trusted_proxies

    assert _trusted_proxies(" 10.0.0.5, 172.19.0.0/16 ") == ["10.0.0.5", "172.19.0.0/16"]
    assert _trusted_proxies("") == []
    with pytest.raises(ImproperlyConfigured, match="RADTRIAGE_TRUSTED_PROXIES: 'proxy.local'"):
        _trusted_proxies("proxy.local")
