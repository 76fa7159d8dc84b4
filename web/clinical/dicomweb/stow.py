"""STOW-RS (PS3.18 10.5): store DICOM instances sent as multipart/related, each through the
same path as every other entry point (validation, hostile-input and wrong-patient rules,
analyses queued as for C-STORE), and answer per instance: stored, or failed with a reason.

HTTP status as PS3.18 says: 200 every instance stored, 202 some stored and some failed, 409
none stored; 415 for a body that is not multipart/related of application/dicom, 400 for one
that cannot be split into parts.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pydicom
from django.conf import settings
from django.db import DatabaseError
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from web.clinical.ingest.parts import UploadFields
from web.clinical.ingest.uploads import STORAGE_FAILURES, images_upload_many

log = logging.getLogger(__name__)

DICOM = "application/dicom"
# Failure reasons (PS3.4 Annex B / PS3.18 STOW-RS).
OUT_OF_RESOURCES = 0xA700  # could not store it now: send it again later
STUDY_MISMATCH = 0xA900  # the instance belongs to another study than the one posted to
CANNOT_UNDERSTAND = 0xC000  # refused: not DICOM, corrupt, not a radiograph, wrong patient


class StowBodyError(ValueError):
    """The request body is not what STOW-RS takes (`str()` says why); `status` is the HTTP
    status to answer (400 or 415)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Part:
    content_type: str
    data: bytes


@dataclass
class StowOutcome:
    """The PS3.18 answer: its HTTP status, the response data set and a line per failure."""

    status: int
    response: Dataset
    failures: list[str] = field(default_factory=list)
    stored_study_ids: list[int] = field(default_factory=list)


def multipart_split(body: bytes, content_type: str) -> list[Part]:
    """A multipart/related body -> its parts. Raises StowBodyError."""
    kind, *params = [p.strip() for p in content_type.split(";")]
    values = {k.strip().lower(): v.strip().strip('"') for k, _, v in (p.partition("=") for p in params)}
    if kind.lower() != "multipart/related" or values.get("type", DICOM).lower() != DICOM:
        raise StowBodyError(
            f'Send instances as multipart/related; type="{DICOM}" (this body is {kind or "untyped"}).', 415
        )
    boundary = values.get("boundary", "").encode("latin-1")
    if not boundary:
        raise StowBodyError("The multipart/related Content-Type names no boundary.", 400)
    pieces = (b"\r\n" + body).split(b"\r\n--" + boundary)
    parts = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            break  # the close delimiter
        head, separator, data = piece.partition(b"\r\n\r\n")
        if not separator:
            raise StowBodyError(
                "A part of the body has no header block (a blank line after its headers).", 400
            )
        parts.append(Part(_part_type(head), data))
    if not parts:
        raise StowBodyError("The body holds no part: send one DICOM instance per part.", 400)
    return parts


def _part_type(head: bytes) -> str:
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-type":
            return value.split(";")[0].strip().lower()
    return DICOM  # a part without Content-Type takes the body's type


def instances_store(
    *, parts: Sequence[Part], study_uid: str | None, uploaded_by: Any, ip_address: str | None, base_url: str
) -> StowOutcome:
    """Store each part that is a DICOM instance (of `study_uid` when posted to a study)."""
    response = Dataset()
    stored, failed = DicomSequence(), DicomSequence()
    failures: list[str] = []
    accepted: list[tuple[int, Part, Dataset]] = []
    for number, part in enumerate(parts, start=1):
        header = _header(part.data)
        reason = _refusal(part, header, study_uid)
        if reason:
            failed.append(_failed(header, reason[0]))
            failures.append(f"instance {number}: {reason[1]}")
        else:
            accepted.append((number, part, header))
    study_ids: list[int] = []
    if accepted:
        try:
            items = images_upload_many(
                files=[(f"stow-{number}.dcm", part.data) for number, part, _ in accepted],
                fields=UploadFields(),
                conditions=None,
                queue=settings.QUEUE_BATCH,
                uploaded_by=uploaded_by,
                ip_address=ip_address,
            )
        except DatabaseError as exc:
            log.error("STOW-RS could not store %d instance(s): %s", len(accepted), type(exc).__name__)
            items = None
        for index, (number, _, header) in enumerate(accepted):
            item = items[index] if items is not None else None
            if item is not None and item.result is not None:
                image = item.result.image
                stored.append(
                    _referenced(header, image.sop_instance_uid, base_url, image.study.study_instance_uid)
                )
                study_ids.append(image.study_id)
            elif item is None or item.status_code in STORAGE_FAILURES:
                failed.append(_failed(header, OUT_OF_RESOURCES))
                failures.append(f"instance {number}: not stored now, send it again later.")
            else:
                failed.append(_failed(header, CANNOT_UNDERSTAND))
                failures.append(f"instance {number}: {item.error}")
    if study_uid or len({h.get("StudyInstanceUID") for _, _, h in accepted}) == 1:
        uid = study_uid or str(accepted[0][2].get("StudyInstanceUID", ""))
        if uid:
            response.RetrieveURL = f"{base_url}studies/{uid}"
    if stored:
        response.ReferencedSOPSequence = stored
    if failed:
        response.FailedSOPSequence = failed
    status = 200 if not failed else 202 if stored else 409
    return StowOutcome(status, response, failures, study_ids)


def _header(data: bytes) -> Dataset:
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - anything unreadable is refused below, with the reason
        return Dataset()


def _refusal(part: Part, header: Dataset, study_uid: str | None) -> tuple[int, str] | None:
    if part.content_type != DICOM:
        return CANNOT_UNDERSTAND, f"a part of type {part.content_type}; send {DICOM} parts only."
    if "SOPInstanceUID" not in header or "SOPClassUID" not in header:
        return CANNOT_UNDERSTAND, "not a DICOM instance (no readable DICOM header with its SOP UIDs)."
    limit = settings.RADTRIAGE_MAX_UPLOAD_BYTES
    if len(part.data) > limit:
        return CANNOT_UNDERSTAND, f"too large: {len(part.data):,} bytes (limit {limit:,} bytes)."
    if study_uid and header.get("StudyInstanceUID") and str(header.StudyInstanceUID) != study_uid:
        return STUDY_MISMATCH, f"it belongs to study {header.StudyInstanceUID}, not to {study_uid}."
    return None


def _failed(header: Dataset, reason: int) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = str(header.get("SOPClassUID", "") or "")
    item.ReferencedSOPInstanceUID = str(header.get("SOPInstanceUID", "") or "")
    item.FailureReason = reason
    return item


def _referenced(header: Dataset, sop_uid: str, base_url: str, study_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = str(header.get("SOPClassUID", ""))
    item.ReferencedSOPInstanceUID = sop_uid
    series = str(header.get("SeriesInstanceUID", ""))
    item.RetrieveURL = f"{base_url}studies/{study_uid}/series/{series}/instances/{sop_uid}"
    return item
