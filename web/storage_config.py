"""The media storage setting from the environment (docs/storage.md), for web/settings.py and
for anything else that starts the product with other variables (tests, benches).

MEDIA_STORAGE=filesystem (the default): MEDIA_ROOT on this machine.
MEDIA_STORAGE=s3: an S3-compatible bucket every host reaches (S3_BUCKET, S3_ENDPOINT_URL,
S3_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, S3_ADDRESSING_STYLE)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class StorageConfigError(ValueError):
    pass


def media_storage_setting(env: Mapping[str, str]) -> dict[str, Any]:
    kind = env.get("MEDIA_STORAGE") or "filesystem"
    if kind == "filesystem":
        # FileSystemStorage that removes a half-written file (disk full) instead of leaving it.
        return {"BACKEND": "web.clinical.media_storage.MediaStorage"}
    if kind != "s3":
        raise StorageConfigError(f"MEDIA_STORAGE is `filesystem` or `s3`, not {kind!r}.")
    if not env.get("S3_BUCKET"):
        raise StorageConfigError("MEDIA_STORAGE=s3 needs S3_BUCKET (the bucket's name).")
    options = {
        "bucket_name": env["S3_BUCKET"],
        "endpoint_url": env.get("S3_ENDPOINT_URL") or None,
        "region_name": env.get("S3_REGION") or None,
        # Unset: boto3 finds credentials itself (instance role, ~/.aws).
        "access_key": env.get("AWS_ACCESS_KEY_ID") or None,
        "secret_key": env.get("AWS_SECRET_ACCESS_KEY") or None,
        # A name is never reused: a second file under a taken name gets another (as on disk).
        "file_overwrite": False,
        "default_acl": None,
        # MinIO and SeaweedFS address buckets by path, not by host name.
        "addressing_style": env.get("S3_ADDRESSING_STYLE") or "path",
        "signature_version": "s3v4",
    }
    return {"BACKEND": "web.clinical.object_storage.ObjectMediaStorage", "OPTIONS": options}
