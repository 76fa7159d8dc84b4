"""The registry document shared through the object store (MEDIA_STORAGE=s3).

registry.json says which model is active for each condition. On one machine every process
reads one file (the compose `registry` volume). With the object store, hosts share no folder:
the bucket's copy (`registry/registry.json`) is the deployment's, and each process keeps a
local copy at RADTRIAGE_REGISTRY that the engine reads. Whoever changes the document (an
activation, registry_sync, a restore) pulls first and publishes after; a worker pulls before
its jobs, at most every RADTRIAGE_REGISTRY_PULL_SECONDS, so a model an admin activates is the one every
host runs within that. The model files themselves ship in the image (docs/deployment.md)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import connection, transaction

from web.clinical.media_storage import REGISTRY_OBJECT, media_write

log = logging.getLogger(__name__)


_pulled_at: dict[str, float] = {}
# The advisory lock every registry change takes (PostgreSQL): any constant no other lock uses.
REGISTRY_LOCK = 0x52454749


def registry_is_shared() -> bool:
    return bool(settings.MEDIA_STORAGE == "s3")


def registry_publish(path: Path | None = None) -> None:
    """The local registry becomes the deployment's (after a change to it)."""
    if registry_is_shared():
        media_write(REGISTRY_OBJECT, Path(path or settings.RADTRIAGE_REGISTRY).read_bytes())


def registry_pull(path: Path | None = None, *, every: float | None = None, strict: bool = False) -> bool:
    """Bring the local copy up to the deployment's, at most once per `every` seconds; True if
    it changed. Nothing published yet: the local copy stands. The store out of reach: the
    local copy stands for a reader (the job then says what else failed); `strict` (a writer
    about to change it) raises instead."""
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
        if strict:
            raise
        log.warning("Could not read the shared registry; using %s as it is", local, exc_info=True)
        return False
    if local.is_file() and local.read_bytes() == document:
        return False
    _write_atomic(local, document)
    log.info("Model registry %s updated from the object store", local)
    return True


@contextlib.contextmanager
def registry_changing(path: Path | None = None) -> Iterator[Path]:
    """The one way to change the registry document: yields the local path to change. One change
    at a time across the deployment (a database lock, held to the end of the transaction this
    opens); made on the deployment's latest copy; published when done. If anything fails, the
    local copy goes back to what it was and the transaction (the audit row with it) rolls back:
    no host runs a change that is not on record."""
    local = Path(path or settings.RADTRIAGE_REGISTRY)
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [REGISTRY_LOCK])
        registry_pull(local, every=0, strict=True)
        before = local.read_bytes() if local.is_file() else None
        try:
            yield local
            if local.is_file() and (local.read_bytes() != before or not registry_published()):
                registry_publish(local)
        except BaseException:
            if before is None:
                local.unlink(missing_ok=True)
            else:
                _write_atomic(local, before)
            raise


def registry_refuse_local_change(what: str, *, registry: str | Path) -> None:
    """Training and fitting write this host's registry and model files: with a shared registry
    the next refresh would drop the change, and no other host has the new files."""
    deployments = Path(settings.RADTRIAGE_REGISTRY).resolve()
    if registry_is_shared() and Path(registry).resolve() == deployments:
        raise RegistryShared(
            f"{what} changes this host's model registry, but MEDIA_STORAGE=s3 shares one registry "
            "across hosts. Run it where RADTRIAGE_REGISTRY is a registry of its own (MEDIA_STORAGE="
            "filesystem), then ship the model in the image: registry_sync adds it on every host."
        )


class RegistryShared(Exception):
    pass


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
