"""Wrong-patient safety: a file that matches a stored image by bytes or SOPInstanceUID is
a duplicate only when it is the same patient's image; anything else is refused and
kept for review as an UploadConflict, never merged into another patient's study."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q

from core.errors import XRayDecodeError
from core.imaging import load_xray
from web.clinical.audit.records import audit_record
from web.clinical.files import files_delete
from web.clinical.ingest.parts import (
    Decoded,
    PatientValues,
    UploadFields,
    UploadRejected,
    UploadResult,
    header_value,
    pixels_digest,
)
from web.clinical.models import Image, UploadConflict

log = logging.getLogger(__name__)


def _image_find(*, sha256: str, sop_uid: str) -> Image | None:
    # Asked on every upload and almost always empty: a one-table query (PostgreSQL plans the
    # three-table join in over a millisecond); the join only for the rare duplicate.
    found = (
        Image.objects.filter(Q(sha256=sha256) | Q(sop_instance_uid=sop_uid))
        .values_list("pk", flat=True)
        .first()
    )
    return None if found is None else Image.objects.select_related("study__patient").get(pk=found)


class UploadConflictError(UploadRejected):
    """The file clashes with a stored image of another identity; it is kept for review."""

    def __init__(self, message: str, *, conflict: UploadConflict) -> None:
        super().__init__(message, status_code=409)
        self.conflict = conflict


@dataclass(frozen=True)
class Identity:
    """Who an upload says the image belongs to, and who sent it."""

    patient: PatientValues
    fields: UploadFields
    uploaded_by: Any
    ip_address: str | None


def stored_copy(decoded: Decoded, identity: Identity) -> Image | None:
    """The stored image this upload is a copy of, or None if it is new.

    A match on bytes or SOPInstanceUID is a copy only when it is the same patient's and the
    same pixels: anything else is a clash (UploadConflictError), because answering with the
    stored image would hand the uploader another patient's study and drop the new image.
    """
    existing = _image_find(sha256=decoded.sha256, sop_uid=decoded.sop_uid)
    if existing is None:
        return None
    # A file sent without any patient ID claims no patient, so it contradicts none: the same
    # image again is a duplicate of the stored one, whoever's it is.
    claimed = None if identity.patient.generated else identity.patient.patient_id
    kind = _clash_kind(existing, decoded, patient_id=claimed)
    if kind is None:
        return existing
    raise _conflict_keep(kind, decoded=decoded, existing=existing, identity=identity)


def _clash_kind(existing: Image, decoded: Decoded, *, patient_id: str | None) -> str | None:
    same_file = existing.sha256 == decoded.sha256
    if patient_id is not None and existing.study.patient.patient_id != patient_id:
        return (
            UploadConflict.Kind.SAME_FILE_OTHER_PATIENT
            if same_file
            else UploadConflict.Kind.SAME_UID_OTHER_PATIENT
        )
    if same_file or _same_pixels(existing, decoded):
        return None  # the same image again (a re-export keeps the pixels): a duplicate
    return UploadConflict.Kind.SAME_UID_OTHER_PIXELS


def _same_pixels(existing: Image, decoded: Decoded) -> bool:
    """Decoded pixels equal (read only on the rare SOPInstanceUID match with other bytes)."""
    try:
        with existing.file.open("rb") as stored:
            pixels = load_xray(
                stored.read(), max_pixels=settings.RADTRIAGE_MAX_PIXELS, read_metadata=False
            ).pixels
    except (OSError, XRayDecodeError):
        log.warning("Stored image %s could not be read to compare pixels", existing.pk)
        return False
    return pixels_digest(pixels) == decoded.pixels_sha256


_CONFLICT_MESSAGES = {
    UploadConflict.Kind.SAME_FILE_OTHER_PATIENT: (
        "This exact file is already stored for a different patient, not {patient}."
    ),
    UploadConflict.Kind.SAME_UID_OTHER_PATIENT: (
        "An image with the same SOPInstanceUID ({uid}) is already stored for a different "
        "patient, not {patient}."
    ),
    UploadConflict.Kind.SAME_UID_OTHER_PIXELS: (
        "An image with the same SOPInstanceUID ({uid}) but different pixels is already stored "
        "for patient {patient}."
    ),
}


def _conflict_keep(
    kind: str, *, decoded: Decoded, existing: Image, identity: Identity
) -> UploadConflictError:
    """Keep the refused file for review (once per file and claimed patient) and say why."""
    patient_id = identity.patient.patient_id
    claimed = {
        "patient_id": patient_id,
        "patient_name": identity.patient.name,
        "study_instance_uid": header_value(decoded.xray.metadata, "StudyInstanceUID")
        or identity.fields.study_instance_uid,
        "accession_number": header_value(decoded.xray.metadata, "AccessionNumber")
        or identity.fields.accession_number,
    }
    stored: list[str] = []
    try:
        with transaction.atomic():
            conflict = (
                UploadConflict.objects.select_for_update()
                .filter(sha256=decoded.sha256, claimed_patient_id=patient_id)
                .first()
            )
            if conflict is None:
                conflict = _conflict_build(
                    kind,
                    decoded=decoded,
                    existing=existing,
                    identity=identity,
                    claimed=claimed,
                    stored=stored,
                )
                conflict.save()
            else:
                conflict.attempts = F("attempts") + 1
                conflict.save(update_fields=["attempts"])
            audit_record(
                actor=identity.uploaded_by,
                action="image.upload_conflict",
                obj=conflict,
                ip_address=identity.ip_address,
                detail={
                    "kind": kind,
                    "existing_image": existing.pk,
                    "filename": decoded.filename,
                    "sha256": decoded.sha256,
                },
            )
    except BaseException:
        files_delete(stored)
        raise
    log.warning("Upload conflict #%s (%s) with image %s", conflict.pk, kind, existing.pk)
    return UploadConflictError(conflict.message, conflict=conflict)


def _conflict_build(
    kind: str,
    *,
    decoded: Decoded,
    existing: Image,
    identity: Identity,
    claimed: dict[str, Any],
    stored: list[str],
) -> UploadConflict:
    conflict = UploadConflict(
        kind=kind,
        original_filename=(decoded.filename or "")[:255],
        sha256=decoded.sha256,
        sop_instance_uid=decoded.sop_uid[:64],
        claimed_patient_id=claimed["patient_id"],
        claimed_fields=claimed,
        existing_image=existing,
        uploaded_by=identity.uploaded_by
        if getattr(identity.uploaded_by, "is_authenticated", False)
        else None,
        ip_address=identity.ip_address,
    )
    ext = {"dicom": "dcm", "png": "png", "jpeg": "jpg"}[decoded.xray.source_format]
    conflict.file.save(f"{decoded.sop_uid}.{ext}", decoded.content(), save=False)
    stored.append(conflict.file.name)
    # The id is only known after the insert; the message names it so the uploader can quote it.
    conflict.save()
    reason = _CONFLICT_MESSAGES[UploadConflict.Kind(kind)].format(
        uid=decoded.sop_uid, patient=claimed["patient_id"]
    )
    conflict.message = (
        f"Refused: {reason} The file was not added to any study; it is kept "
        f"for review as upload conflict #{conflict.pk}. Ask an administrator "
        "to check which patient it belongs to."
    )
    return conflict


def duplicate(image: Image, *, uploaded_by: Any, ip_address: str | None) -> UploadResult:
    audit_record(
        actor=uploaded_by,
        action="image.upload_duplicate",
        patient=image.study.patient,
        study=image.study,
        obj=image,
        ip_address=ip_address,
    )
    message = "This image was already uploaded; the stored copy and its analyses are returned."
    return UploadResult(image=image, analyses=list(image.analyses.all()), created=False, warnings=[message])
