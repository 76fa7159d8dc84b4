"""The registry document shared through the object store (MEDIA_STORAGE=s3).

registry.json says which model is active for each condition. On one machine every process
reads one file (the compose `registry` volume). With the object store, hosts share no folder:
the bucket's copy (`registry/registry.json`) is the deployment's, and each process keeps a
local copy at RADTRIAGE_REGISTRY that the engine reads. Whoever changes the document (an
activation, registry_sync, a restore) pulls first and publishes after; a worker pulls before
its jobs, at most every RADTRIAGE_REGISTRY_PULL_SECONDS, so a model an admin activates is the one every
host runs within that. The model files themselves ship in the image (docs/deployment.md)."""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage

from web.clinical.media_storage import media_write

log = logging.getLogger(__name__)

REGISTRY_OBJECT = "registry/registry.json"

_pulled_at: dict[str, float] = {}


def registry_is_shared() -> bool:
    return bool(settings.MEDIA_STORAGE == "s3")


def registry_publish(path: Path | None = None) -> None:
    """The local registry becomes the deployment's (after a change to it)."""
    if registry_is_shared():
        media_write(REGISTRY_OBJECT, Path(path or settings.RADTRIAGE_REGISTRY).read_bytes())


def registry_pull(path: Path | None = None, *, every: float | None = None) -> bool:
    """Bring the local copy up to the deployment's, at most once per `every` seconds; True if
    it changed. Nothing published yet, or the store out of reach: the local copy stands (the
    job then says what else failed)."""
    if not registry_is_shared():
        return False
    local = Path(path or settings.RADTRIAGE_REGISTRY)
    now = time.monotonic()
    every = settings.RADTRIAGE_REGISTRY_PULL_SECONDS if every is None else every
    if now - _pulled_at.get(str(local), -math.inf) < every:
        return False
    _pulled_at[str(local)] = now
    try:
        with default_storage.open(REGISTRY_OBJECT, "rb") as handle:
            document = handle.read()
    except FileNotFoundError:
        return False
    except OSError:
        log.warning("Could not read the shared registry; using %s as it is", local, exc_info=True)
        return False
    if local.is_file() and local.read_bytes() == document:
        return False
    _write_atomic(local, document)
    log.info("Model registry %s updated from the object store", local)
    return True


def registry_published() -> bool:
    return registry_is_shared() and default_storage.exists(REGISTRY_OBJECT)


def _write_atomic(path: Path, content: bytes) -> None:
    # Replaced in one step: the engine, stat-ing it per job, never reads half a document.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    os.replace(tmp, path)
