"""The media storage: where images, thumbnails, heat maps, report PDFs and quarantined uploads
live. Every process reaches them through Django's storage API only, so the same code runs on
one machine's folder (MediaStorage, the default) or on S3-compatible object storage
(ObjectMediaStorage, MEDIA_STORAGE=s3), where web, workers and the listener share no folder.

Both add to Django's storage API one listing, `walk(prefix)`: every stored name under a
prefix with its modification time, which the sweeps and the backup use."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from django.core.files.base import ContentFile, File
from django.core.files.storage import FileSystemStorage, default_storage

# The disk is full or the quota reached: the user is told the storage is full (507).
STORAGE_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# The object store's own words for the same.
# Where media_check writes its probe file.
CHECK_FOLDER = ".storage-check"
# The model registry's shared copy (web.clinical.registry.shared), beside the stored files.
REGISTRY_OBJECT = "registry/registry.json"
STORAGE_FULL_CODES = frozenset({"QuotaExceeded", "XMinioStorageFull", "InsufficientStorage"})


class StorageUnavailable(OSError):
    """The object store could not be reached or refused the request; `code` is its error code."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


def storage_is_full(exc: BaseException) -> bool:
    if isinstance(exc, StorageUnavailable):
        return exc.code in STORAGE_FULL_CODES
    return isinstance(exc, OSError) and exc.errno in STORAGE_FULL_ERRNOS


def storage_is_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, StorageUnavailable) and exc.code not in STORAGE_FULL_CODES


class MediaStorage(FileSystemStorage):
    """A folder (MEDIA_ROOT). A write that fails half-way (the disk filled up, the volume went
    read-only) removes what it wrote: Django leaves the partial file, and no row would point at it."""

    def _save(self, name: str, content: Any) -> str:
        path = self.path(name)
        existed = os.path.exists(path)
        try:
            return super()._save(name, content)  # type: ignore[misc]
        except OSError:
            # `name` was free (get_available_name): what is there now is our partial write.
            if not existed and os.path.isfile(path):
                with contextlib.suppress(OSError):
                    os.remove(path)
            raise

    def walk(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        root = self.path("")
        top = self.path(prefix) if prefix else root
        for dirpath, _dirnames, filenames in os.walk(top):
            for filename in sorted(filenames):
                full = os.path.join(dirpath, filename)
                try:
                    modified = os.stat(full).st_mtime
                except FileNotFoundError:
                    continue  # removed meanwhile
                yield os.path.relpath(full, root).replace(os.sep, "/"), modified

    def describe(self) -> str:
        return f"the folder {self.location}"

    def overwrite(self, name: str, content: bytes) -> None:
        """`content` under exactly `name`, replacing what is there in one step."""
        path = self.path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".overwrite-", dir=os.path.dirname(path))
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise


# --------------------------------------------------------------------------- the whole store


def media_walk(prefix: str = "") -> Iterator[tuple[str, float]]:
    """Every stored name under `prefix` with its modification time (seconds since the epoch)."""
    walk = getattr(default_storage, "walk", None)
    if walk is not None:
        yield from walk(prefix)
        return
    # Another Django storage a deployment configured: its own listing, one call per name.
    folders = [prefix.rstrip("/")]
    while folders:
        folder = folders.pop()
        subfolders, names = default_storage.listdir(folder)
        folders.extend(f"{folder}/{sub}" if folder else sub for sub in subfolders)
        for name in names:
            full = f"{folder}/{name}" if folder else name
            yield full, default_storage.get_modified_time(full).timestamp()


def media_is_empty() -> bool:
    """No stored file (the registry's shared copy and the storage check's probe aside: a store a
    deployment has started on once holds them, and they are not patients' files)."""
    return not any(
        name != REGISTRY_OBJECT and not name.startswith(f"{CHECK_FOLDER}/") for name, _ in media_walk()
    )


def media_describe() -> str:
    describe = getattr(default_storage, "describe", None)
    return str(describe()) if describe else type(default_storage).__name__


def media_write(name: str, content: bytes | File) -> None:
    """Store `content` under exactly `name`, replacing what is there (a restore, a journal, the
    registry's shared copy): in one step where the storage can."""
    overwrite = getattr(default_storage, "overwrite", None)
    if overwrite is not None:
        overwrite(name, content if isinstance(content, bytes) else content.read())
        return
    if default_storage.exists(name):
        default_storage.delete(name)
    saved = default_storage.save(name, ContentFile(content) if isinstance(content, bytes) else content)
    if saved != name:
        raise StorageUnavailable(f"The storage kept {name} as {saved}: another writer got there first.")


def media_check(*, create_bucket: bool = False) -> str:
    """Write, read back and delete one small file; what was checked, or StorageUnavailable /
    OSError saying what failed. `create_bucket`: make a missing S3 bucket first."""
    notes = []
    ensure = getattr(default_storage, "bucket_ensure", None)
    if create_bucket and ensure is not None and ensure():
        notes.append("bucket created")
    media_reachable()  # a missing bucket said as such
    name = f"{CHECK_FOLDER}/{os.getpid()}-{time.time_ns()}.txt"
    payload = b"radtriage storage check\n"
    media_write(name, payload)
    try:
        with default_storage.open(name, "rb") as handle:
            if handle.read() != payload:
                raise StorageUnavailable(f"{media_describe()} gave back other bytes than were written.")
    finally:
        default_storage.delete(name)
    return ", ".join([f"{media_describe()}: write, read and delete work", *notes])


def media_reachable() -> None:
    """Raises StorageUnavailable if the object store cannot be reached (a cheap check for
    /healthz/); a folder always is."""
    reach = getattr(default_storage, "reach", None)
    if reach is not None:
        reach()
