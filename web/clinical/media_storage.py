"""The media storage: Django's FileSystemStorage, except that a write that fails half-way
(the disk filled up, the volume went read-only) removes what it wrote. Django leaves the
partial file behind, and no row would ever point at it."""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Any

from django.core.files.storage import FileSystemStorage

# The disk is full or the quota reached: the user is told the storage is full (507).
STORAGE_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def storage_is_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in STORAGE_FULL_ERRNOS


class MediaStorage(FileSystemStorage):
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
