"""Real DICOM peers on loopback: the listener in this process (pynetdicom threads on the test
database), dcmtk's tools as subprocesses, and a small Storage SCP standing in for a PACS."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.web.fixtures import REPO

SHARED_DICOM = REPO.parent / "shared" / "data" / "dicom"
LISTENER_AE = "RADTRIAGE"
MODALITY_AE = "MODALITY1"


@pytest.fixture(autouse=True)
def isolated_media(request: Any, settings: Any, tmp_path: Path) -> Path:
    """Each test's own MEDIA_ROOT, except where a worker process (on the session's) reads it."""
    if not {"live_worker", "pacs_stack"} & set(request.fixturenames):
        settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def dcmtk(tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run one of dcmtk's command-line tools (Debian package dcmtk, scripts/test-prereqs.sh)."""
    path = shutil.which(tool)
    assert path, f"dcmtk's {tool} is missing: run scripts/test-prereqs.sh (apt-get install dcmtk)"
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def listener(transactional_db: Any) -> Iterator[tuple[str, int]]:
    """The Storage SCP on a free loopback port; only MODALITY1 and STORESCU may call."""
    from web.clinical.dicom.listener import StorageSCP

    scp = StorageSCP(ae_title=LISTENER_AE, allowed_calling=[MODALITY_AE, "STORESCU"], batch_size=4)
    address = scp.start("127.0.0.1", 0)
    yield address
    scp.stop()


class FakePACS:
    """A Storage SCP that keeps what it receives; `refuse` makes it answer 0xA700."""

    def __init__(self, ae_title: str = "TESTPACS") -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.received: list[Any] = []
        self.calling: list[str] = []
        self.refuse = False
        self._lock = threading.Lock()
        self.ae = AE(ae_title=ae_title)
        self.ae.supported_contexts = AllStoragePresentationContexts
        self.server = self.ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        self.port = int(self.server.server_address[1])

    def _store(self, event: Any) -> int:
        if self.refuse:
            return 0xA700
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        with self._lock:
            self.received.append(dataset)
            self.calling.append(event.assoc.requestor.ae_title)
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture()
def fake_pacs() -> Iterator[FakePACS]:
    pacs = FakePACS()
    yield pacs
    pacs.stop()


def client_with_role(django_user_model: Any, username: str, role: str | None) -> Any:
    """An API client logged in as a user in the given role's group (None: an outsider)."""
    from django.contrib.auth.models import Group
    from rest_framework.test import APIClient

    user = django_user_model.objects.create_user(username, password=f"pw-{username}")
    if role:
        # get_or_create: a transactional test's flush also empties the groups migration 0006 made.
        user.groups.add(Group.objects.get_or_create(name=role)[0])
    client = APIClient()
    client.force_login(user)
    client.user = user
    return client


@pytest.fixture()
def radiologist_api(transactional_db: Any, django_user_model: Any) -> Any:
    return client_with_role(django_user_model, "dr.grey", "radiologist")


@pytest.fixture()
def admin_api(transactional_db: Any, django_user_model: Any) -> Any:
    return client_with_role(django_user_model, "it.admin", "admin")


@pytest.fixture()
def outsider_api(transactional_db: Any, django_user_model: Any) -> Any:
    return client_with_role(django_user_model, "mr.nobody", None)


def analysed_image(client: Any, data: bytes, *, timeout: float = 120) -> Any:
    """Upload through the API and wait for the real worker to finish every analysis."""
    from tests.web.fixtures import upload, wait_for
    from web.clinical.models import Analysis, Image

    response = upload(client, data)
    assert response.status_code == 201, response.content
    image = Image.objects.get(pk=response.json()["image"]["id"])
    wait_for(
        lambda: not Analysis.objects.filter(image=image, state__in=["queued", "running"]).exists(),
        timeout=timeout,
        what="the analyses to finish",
    )
    return image


@dataclass
class Stack:
    pacs: FakePACS
    listener_port: int
    worker: Any
    listener: Any


@pytest.fixture(scope="module")
def pacs_stack(
    django_db_setup: Any, django_db_blocker: Any, tiny_registry: Path, service_logs: Path
) -> Iterator[Stack]:
    """The deployment in small: `manage.py dicom_listener` and a Celery worker configured to
    C-STORE results to a PACS (FakePACS, here), on a Redis namespace of their own (so the
    session's other worker never takes their jobs). It retries twice, 0.2 s apart, then fails."""
    import sys
    import uuid

    from tests.web.fixtures import Service, celery_worker, free_port, service_env

    pacs = FakePACS()
    port = free_port()
    with django_db_blocker.unblock():
        env = service_env(
            RADTRIAGE_REGISTRY=str(tiny_registry),
            RADTRIAGE_NAMESPACE=f"rtd{uuid.uuid4().hex[:8]}",
            RADTRIAGE_PACS_HOST="127.0.0.1",
            RADTRIAGE_PACS_PORT=str(pacs.port),
            RADTRIAGE_PACS_AE_TITLE="TESTPACS",
            RADTRIAGE_PACS_MAX_RETRIES="2",
            RADTRIAGE_PACS_RETRY_DELAY="0.2",
            RADTRIAGE_DICOM_ALLOWED_AE_TITLES="STORESCU",
        )
    argv = [sys.executable, "manage.py", "dicom_listener", "--host", "127.0.0.1", "--port", str(port)]
    listener = Service("dicom-listener", argv, env, service_logs).start(
        ready_text="DICOM listener ready", timeout=60
    )
    worker = celery_worker("pacs", env, service_logs).start(ready_text="ready.", timeout=90)
    yield Stack(pacs=pacs, listener_port=port, worker=worker, listener=listener)
    worker.stop()
    listener.stop()
    pacs.stop()
