"""S3-compatible object storage for the media (MEDIA_STORAGE=s3): AWS S3, MinIO, SeaweedFS.
Web, workers and the listener then share no folder: a worker on another host needs only the
database, the broker and the bucket. Loaded only when configured (it imports boto3)."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError
from storages.backends.s3 import S3Storage
from storages.utils import clean_name

from web.clinical.media_storage import StorageUnavailable

T = TypeVar("T")
NOT_FOUND_CODES = frozenset({"404", "NoSuchKey"})


def _translated(call: Callable[..., T], *args: Any) -> T:
    """The store's failures as StorageUnavailable (its error code kept), which the upload path
    turns into a clear refusal that keeps nothing; a missing object as FileNotFoundError."""
    try:
        return call(*args)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code in NOT_FOUND_CODES:
            name = str(args[0]) if args else ""
            raise FileNotFoundError(errno.ENOENT, "not in the object store", name) from exc
        message = f"The object store refused the request: {code} {error.get('Message', '')}".strip()
        raise StorageUnavailable(message, code) from exc
    except BotoCoreError as exc:
        raise StorageUnavailable(f"The object store cannot be reached: {exc}") from exc


class ObjectMediaStorage(S3Storage):
    """Each write is one object PUT: whole or not at all, so nothing half-written is left."""

    def _save(self, name: str, content: Any) -> str:
        return _translated(super()._save, name, content)

    def _open(self, name: str, mode: str = "rb") -> Any:
        def opened() -> Any:
            handle = super(ObjectMediaStorage, self)._open(name, mode)
            if "r" in mode:
                handle.file  # noqa: B018 - the GET now, so its failures are translated here too
            return handle

        try:
            return _translated(opened)
        except FileNotFoundError:
            self.reach()  # a missing bucket is the store's fault, not a missing file
            raise

    def overwrite(self, name: str, content: bytes) -> None:
        """`content` under exactly `name`, replacing what is there: one PUT."""
        key = self._normalize_name(clean_name(name))
        _translated(lambda: self.bucket.Object(key).put(Body=content))

    def delete(self, name: str) -> None:
        _translated(super().delete, name)

    def exists(self, name: str) -> bool:
        return bool(_translated(super().exists, name))

    def size(self, name: str) -> int:
        return int(_translated(super().size, name))

    def walk(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        """Every stored name under `prefix` with its modification time, from the listing alone
        (one request per thousand objects, none per object)."""
        location = str(self.location).strip("/")
        cut = len(location) + 1 if location else 0
        listing = self.bucket.objects.filter(Prefix=f"{location}/{prefix}" if location else prefix)
        pages = _translated(lambda: iter(listing.pages()))
        while (page := _translated(next, pages, None)) is not None:
            for summary in page:
                if not summary.key.endswith("/"):  # a "folder" marker some tools make: no file
                    yield summary.key[cut:], summary.last_modified.timestamp()

    def describe(self) -> str:
        return f"the bucket {self.bucket_name} at {self.endpoint_url or 'AWS S3'}"

    def bucket_ensure(self) -> bool:
        """Create the bucket if it is missing; True when it was created."""
        client = self.connection.meta.client
        try:
            _translated(lambda: client.head_bucket(Bucket=self.bucket_name))
            return False
        except FileNotFoundError:
            where = {}
            if self.region_name and self.region_name != "us-east-1":  # AWS's rule for any other region
                where = {"CreateBucketConfiguration": {"LocationConstraint": self.region_name}}
            try:
                _translated(lambda: client.create_bucket(Bucket=self.bucket_name, **where))
            except StorageUnavailable as exc:
                # Another process (a container starting beside this one) made it in between.
                if exc.code == "BucketAlreadyOwnedByYou":
                    return False
                raise
            return True

    def reach(self) -> None:
        """StorageUnavailable if the store cannot be reached or the bucket does not exist."""
        client = self.connection.meta.client
        try:
            _translated(lambda: client.head_bucket(Bucket=self.bucket_name))
        except FileNotFoundError:
            raise StorageUnavailable(
                f"The bucket {self.bucket_name} does not exist.", "NoSuchBucket"
            ) from None
