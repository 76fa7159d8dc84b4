"""Real DICOM peers on loopback: the listener in this process (pynetdicom threads on the test
database), dcmtk's tools as subprocesses, and a small Storage SCP standing in for a PACS."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
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
    from web.clinical.services.dicom.listener import StorageSCP

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
