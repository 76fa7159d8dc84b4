"""One received instance through the browser's upload path, and the DIMSE status it earns."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from django.conf import settings
from django.db import DatabaseError, DataError

from web.clinical.ingest.parts import UploadFields
from web.clinical.ingest.uploads import STORAGE_FAILURES, images_upload_many

log = logging.getLogger(__name__)

# C-STORE statuses (PS3.4 B.2.3 and pynetdicom's conventions).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # could not store it now: the sender should try again later
DATASET_MISMATCH = 0xA900  # the data set's SOP Class is not the one negotiated
CANNOT_UNDERSTAND = 0xC000  # refused: corrupt, not a radiograph, clashes with another patient


@dataclass
class Stored:
    """What became of one instance: the status to answer and the analyses it queued."""

    status: int
    comment: str = ""
    analysis_ids: dict[str, list[int]] = field(default_factory=dict)  # condition -> ids
    created: bool = False


def dicom_instance_store(*, data: bytes, filename: str, ip_address: str | None) -> Stored:
    """Store one C-STORE'd instance (bytes with its file meta) exactly as an upload; its new
    analyses are returned, not sent, for the association to send in mini-batches. Held to
    the upload size limit, as the upload API is."""
    limit = settings.RADTRIAGE_MAX_UPLOAD_BYTES
    if len(data) > limit:
        return Stored(CANNOT_UNDERSTAND, f"Too large: {len(data):,} bytes (limit {limit:,} bytes).")
    try:
        [item] = images_upload_many(
            files=[(filename, data)],
            fields=UploadFields(),
            conditions=None,
            queue=settings.QUEUE_BATCH,
            ip_address=ip_address,
            dispatch=False,
        )
    except DataError as exc:
        # A value of the instance the database cannot hold: sending it again cannot help.
        log.error("Could not store %s: %s", filename, type(exc).__name__)
        return Stored(CANNOT_UNDERSTAND, "A value in this instance cannot be stored (invalid data).")
    except (DatabaseError, OSError) as exc:
        # The error's class only: a database error's text quotes the row's values (names, IDs).
        log.error("Could not store %s: %s", filename, type(exc).__name__)
        return Stored(OUT_OF_RESOURCES, f"Not stored, try again later: {exc}")
    if item.result is None:
        # The storage full or out of reach: nothing was kept, and the sender may send it again.
        code = OUT_OF_RESOURCES if item.status_code in STORAGE_FAILURES else CANNOT_UNDERSTAND
        return Stored(code, item.error)
    ids: dict[str, list[int]] = {}
    if item.result.created:
        for analysis in item.result.analyses:
            ids.setdefault(analysis.condition, []).append(analysis.pk)
    return Stored(SUCCESS, analysis_ids=ids, created=item.result.created)
