"""The pieces of an upload: decoding and checking the file, what the image is
(header, recogniser), which conditions run, and where it is filed (patient, study)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import re
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile, File
from django.utils import timezone

from core.applicability import region_of_body_part, seen_as
from core.conditions import (
    REGION_BODY_PART,
    conditions_for_body_part,
    get_condition,
    normalise_body_part,
)
from core.errors import RadTriageError, UnknownConditionError, XRayDecodeError
from core.imaging import XRay, load_xray, validate_radiograph
from web.clinical.files import field_file_save, thumbnail_jpeg
from web.clinical.ingest.prechecks import upload_precheck
from web.clinical.models import Analysis, Image, Patient, Study
from web.clinical.worklist.patients import patient_save, study_patient_copies

log = logging.getLogger(__name__)


class UploadRejected(Exception):
    """The upload cannot be accepted; `str()` is the message for the user."""

    def __init__(self, message: str, *, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class UploadFields:
    """Patient/study fields from the form. For DICOM the header wins where it has a value."""

    patient_id: str = ""
    patient_name: str = ""
    birth_date: dt.date | None = None
    sex: str = ""
    study_instance_uid: str = ""
    accession_number: str = ""
    study_date: dt.date | None = None
    modality: str = ""
    body_part: str = ""
    description: str = ""
    priority: int = Study.Priority.ROUTINE


@dataclass
class UploadResult:
    image: Image
    analyses: list[Analysis]
    created: bool
    warnings: list[str] = field(default_factory=list)


# What an upload is read from: its bytes, or a binary file (Django's temporary upload file),
# read once to decode and streamed again to the media storage: a batch never sits in memory.
UploadSource = bytes | IO[bytes]


@dataclass(frozen=True)
class Decoded:
    """A readable radiograph and its identity (checked before anything is stored).

    Everything the upload needs from the pixels (thumbnail, recognition, a digest to compare
    re-exports) is made at decode time and the pixels are dropped: `xray.pixels` is a
    zero-size stand-in of the right shape, so a batch holds one image's pixels at a time.
    """

    filename: str
    source: UploadSource
    size: int
    xray: XRay
    sha256: str
    sop_uid: str
    pixels_sha256: str = ""
    thumbnail: bytes = b""
    recognition: dict[str, Any] = field(default_factory=dict)

    def content(self) -> File:
        """The file's bytes for the storage, streamed from the source."""
        if isinstance(self.source, bytes):
            return ContentFile(self.source)
        self.source.seek(0)
        # A plain File (no temporary_file_path): the storage copies, never moves, the
        # upload's temporary file, which a second attempt at storing may need again.
        return File(self.source)


def pixels_digest(pixels: np.ndarray) -> str:
    digest = hashlib.sha256(f"{pixels.shape}{pixels.dtype}".encode())
    digest.update(np.ascontiguousarray(pixels).data.cast("B"))  # no copy of the pixels
    return digest.hexdigest()


@dataclass(frozen=True)
class PatientValues:
    patient_id: str
    name: str
    birth_date: dt.date | None
    sex: str
    generated: bool = False  # no patient ID came with the file: see patient_values


@dataclass(frozen=True)
class Plan:
    """Where a new image goes and what runs on it (no database access to make)."""

    decoded: Decoded
    body_part: str
    body_part_source: str  # Study.BodyPartSource
    codes: list[str]
    warnings: list[str]
    patient: PatientValues
    study_uid: str
    accession: str
    recognition: dict[str, Any]


def upload_decode(source: UploadSource, filename: str) -> Decoded:
    if not isinstance(source, bytes):
        try:
            upload_precheck(source)  # refused from its header: never read whole (ingest.prechecks)
        except XRayDecodeError as exc:
            raise UploadRejected(str(exc)) from None
    data = source if isinstance(source, bytes) else _read_all(source)
    try:
        xray = validate_radiograph(load_xray(data, max_pixels=settings.RADTRIAGE_MAX_PIXELS))
    except XRayDecodeError as exc:
        raise UploadRejected(str(exc)) from None
    for tag in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        uid_check(header_value(xray.metadata, tag), what=f"The DICOM header's {tag}")
    header_text_check(xray.metadata)
    sha256 = hashlib.sha256(data).hexdigest()
    sop_uid = header_value(xray.metadata, "SOPInstanceUID") or _uid_from(sha256)
    return Decoded(
        filename=filename,
        source=source,
        size=len(data),
        # The pixels' stand-in: the right shape, no memory (np.broadcast_to of one byte).
        xray=dataclasses.replace(xray, pixels=np.broadcast_to(np.uint8(0), xray.pixels.shape)),
        sha256=sha256,
        sop_uid=sop_uid,
        pixels_sha256=pixels_digest(xray.pixels),
        thumbnail=thumbnail_jpeg(xray.pixels),
        recognition=_recognise(xray),
    )


def _read_all(source: IO[bytes]) -> bytes:
    source.seek(0)
    return source.read()


# DICOM PS3.5 9.1: digits in dot-separated components, at most 64 characters. The UIDs name the
# stored file and its folder, so anything else (a huge value, '../') is refused, never stored.
UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")


def uid_check(value: str, *, what: str) -> None:
    """Refuse a UID that is not one ('' passes: absent)."""
    if value and (len(value) > 64 or not UID_PATTERN.fullmatch(value)):
        raise UploadRejected(
            f"{what} is not a valid DICOM UID (digits and dots, at most 64 characters; this one "
            f"has {len(value):,} characters): the file cannot be filed safely."
        )


def upload_plan(decoded: Decoded, fields: UploadFields, conditions: list[str] | None) -> Plan:
    meta = decoded.xray.metadata
    uid_check(fields.study_instance_uid.strip(), what="The study_instance_uid given")
    recognition = decoded.recognition
    body_part, source, warnings = _body_part_resolve(
        header=normalise_body_part(header_value(meta, "BodyPartExamined")),
        chosen=normalise_body_part(fields.body_part),
        recognition=recognition,
    )
    codes, condition_warnings = conditions_resolve(conditions, body_part=body_part)
    patient = patient_values(decoded, fields)
    return Plan(
        decoded=decoded,
        body_part=body_part,
        body_part_source=source,
        codes=codes,
        warnings=warnings + condition_warnings + unidentified_warnings(patient),
        patient=patient,
        study_uid=header_value(meta, "StudyInstanceUID") or fields.study_instance_uid.strip(),
        accession=header_value(meta, "AccessionNumber") or fields.accession_number.strip(),
        recognition=recognition,
    )


def body_part_proposal(data: bytes, filename: str) -> dict[str, Any]:
    """What the image recogniser proposes for a file before it is uploaded (nothing is
    stored): the body part the upload would use, and what it sees, so the uploader can
    confirm or override it. Raises UploadRejected for a file that would be refused anyway."""
    decoded = upload_decode(data, filename)
    header = normalise_body_part(header_value(decoded.xray.metadata, "BodyPartExamined"))
    recognition = decoded.recognition
    region = recognition.get("region") or ""
    return {
        "filename": filename,
        "body_part": header or REGION_BODY_PART.get(region, ""),
        "from_header": bool(header),
        "region": region,
        "description": recognition.get("description") or "not recognised as a chest, knee or limb radiograph",
        "confidence": recognition.get("region_confidence"),
    }


def _recognise(xray: XRay) -> dict[str, Any]:
    """What the image recogniser sees ({} if it cannot run: the analyses then say so)."""
    from core.recognition import recognise

    try:
        seen = recognise(xray.pixels)
    except RadTriageError as exc:
        log.error("The image recogniser could not run at upload: %s", exc)
        return {}
    return {
        "region": seen.region,
        "population": seen.population,
        "region_confidence": round(float(seen.region_confidence), 4),
        "age_group": seen.age_group,
        "description": seen_as(seen),
    }


def _body_part_resolve(
    *, header: str, chosen: str, recognition: dict[str, Any]
) -> tuple[str, str, list[str]]:
    """The body part, who gave it (Study.BodyPartSource: the analyses follow a person's choice
    as they follow the header) and warnings. The DICOM header decides; else the uploader's
    choice; else the recognised region. A disagreeing recogniser is said, not followed."""
    seen = recognition.get("region") or ""
    given, source = (header, "header") if header else (chosen, "uploader")
    region = region_of_body_part(given)
    if given and seen in REGION_BODY_PART and region not in ("", seen) and (seen, region) != ("knee", "limb"):
        says = "the DICOM header says" if header else "the upload says"
        words = f"The image recogniser sees {recognition['description']}, but {says} body part {given}"
        return given, source, [f"{words}; {given} was followed."]
    if given:
        return given, source, []
    if seen in REGION_BODY_PART:
        words = f"Body part recognised from the image: {recognition['description']}."
        return REGION_BODY_PART[seen], "recogniser", [words]
    return "", "", []


def conditions_resolve(conditions: list[str] | None, *, body_part: str) -> tuple[list[str], list[str]]:
    """The conditions to run: those asked for, each of which must apply to the body part, or
    (None) all that apply to it."""
    if conditions is None:
        codes = conditions_for_body_part(body_part)
        if not codes:
            what = (
                f"body part '{body_part}'"
                if body_part
                else "an image not recognised as a chest, knee or limb radiograph"
            )
            return [], [
                f"No RadTriage model applies to {what}: the image was stored without "
                "AI analysis. Choose a body part to analyse it anyway."
            ]
        return codes, []
    codes = []
    for code in conditions:
        try:
            condition = get_condition(code)
        except UnknownConditionError as exc:
            raise UploadRejected(str(exc)) from None
        # A condition outside the image's region is refused here, never run and flagged.
        if body_part and not condition.applies_to(body_part):
            raise UploadRejected(
                f"{condition.label} does not apply to this image: its body part is "
                f"{body_part} ({condition.label} applies to {condition.region} images). "
                "Choose a condition for that body part."
            )
        codes.append(condition.code)
    return list(dict.fromkeys(codes)), []


def upload_detail(plan: Plan) -> dict[str, Any]:
    return {"filename": plan.decoded.filename, "sha256": plan.decoded.sha256, "conditions": plan.codes}


@dataclass
class BulkUploadItem:
    """One file of a bulk upload: its result, or why it was refused."""

    filename: str
    result: UploadResult | None = None
    error: str = ""
    status_code: int = 201
    rejection: UploadRejected | None = None  # the refusal itself (a conflict carries its id)

    @classmethod
    def refused(cls, filename: str, exc: UploadRejected) -> BulkUploadItem:
        # The refusal without its traceback: its frames hold the file's bytes, and a batch of
        # refused 150 MB files held them all until the response (+770 MB for four).
        exc.__traceback__ = exc.__context__ = exc.__cause__ = None
        return cls(filename, error=str(exc), status_code=exc.status_code, rejection=exc)


def upload_outcome(result: UploadResult | None, error: str = "") -> str:
    """What the server did with one file, in a sentence for the uploader: stored where,
    duplicate of which study, or refused and why; which analyses were queued, or none and why."""
    if result is None:
        return f"Refused: {error}"
    study = result.image.study
    where = (
        f"study {study.accession_number or f'#{study.pk}'} of patient "
        f"{study.patient.patient_id}, body part {study.body_part or 'unknown'}"
    )
    if not result.created:
        states = ", ".join(f"{a.condition} ({a.state})" for a in result.analyses) or "none"
        return f"Duplicate: already stored in {where}; nothing new stored. Its analyses: {states}."
    if result.analyses:
        return f"Stored in {where}. Analyses queued: {', '.join(a.condition for a in result.analyses)}."
    why = next((w for w in result.warnings if "without AI analysis" in w), "none was asked for.")
    return f"Stored in {where}. No analysis queued: {why}"


def header_value(meta: dict[str, Any], key: str) -> str:
    value = meta.get(key)
    return _unpadded(str(value)) if value not in (None, "") else ""


def _unpadded(text: str) -> str:
    return text.strip().strip("\x00").strip()  # NUL at either end: a sender's padding


def header_text_check(meta: dict[str, Any]) -> None:
    """Refuse a header value with a NUL character inside it: not DICOM text (a sender's bug; a
    DICOM sender is told not to retry), and PostgreSQL cannot store it. The reason names the
    attribute, never its value."""
    for tag, value in meta.items():
        if isinstance(value, str) and "\x00" in _unpadded(value):
            raise UploadRejected(
                f"{tag} holds a NUL character (not valid DICOM text): correct it at the sending "
                "system and send the file again."
            )


def _uid_from(sha256: str) -> str:
    from pydicom.uid import generate_uid

    # Deterministic, so the same PNG/JPEG always maps to the same instance UID.
    return str(generate_uid(entropy_srcs=[sha256]))


def _new_uid() -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid())


def _dicom_date(value: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(value[:8], "%Y%m%d").date() if value else None
    except ValueError:
        return None


# The one patient-ID rule of every route (upload page, API, batches from the browser, an
# archive or a folder, import_batch, the DICOM listener): the DICOM header's PatientID, else the
# patient_id given with the file (form, per-file field, patients.csv row); a file with neither
# is filed under a generated ID that says what it is, never under a guess (a file name is not
# an MRN), and the upload says so in its warnings.
UNIDENTIFIED_PREFIX = "UNIDENTIFIED-"
UNIDENTIFIED_NAME = "(unidentified)"


def patient_values(decoded: Decoded, fields: UploadFields) -> PatientValues:
    meta = decoded.xray.metadata
    patient_id = header_value(meta, "PatientID") or fields.patient_id.strip()
    generated = not patient_id
    if generated:
        patient_id = unidentified_patient_id(decoded, fields)
    if len(patient_id) > 64:
        raise UploadRejected("The patient ID is longer than 64 characters.")
    sex = (header_value(meta, "PatientSex") or fields.sex or "").upper()[:1]
    name = (header_value(meta, "PatientName") or fields.patient_name.strip())[:200]
    return PatientValues(
        patient_id=patient_id,
        name=name or (UNIDENTIFIED_NAME if generated else ""),
        birth_date=_dicom_date(header_value(meta, "PatientBirthDate")) or fields.birth_date,
        sex=sex if sex in {"M", "F", "O"} else "",
        generated=generated,
    )


def unidentified_patient_id(decoded: Decoded, fields: UploadFields) -> str:
    """UNIDENTIFIED-<12 hex>, from the file's study (its images are one patient's), else from
    the image itself (its SOPInstanceUID; a PNG/JPEG's is derived from its bytes): the same
    file sent again, by any route, lands under the same ID (a duplicate, not a clash), and two
    unrelated files are never merged under one invented patient."""
    key = (
        header_value(decoded.xray.metadata, "StudyInstanceUID")
        or fields.study_instance_uid.strip()
        or decoded.sop_uid
    )
    return UNIDENTIFIED_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:12].upper()


def patient_is_unidentified(patient_id: str) -> bool:
    return patient_id.startswith(UNIDENTIFIED_PREFIX)


def unidentified_warnings(patient: PatientValues) -> list[str]:
    if not patient.generated:
        return []
    return [
        f"No patient ID came with this file: it is filed under {patient.patient_id} "
        f"{UNIDENTIFIED_NAME}. Correct the patient before the study is reported."
    ]


def _patient_fill_gaps(patient: Patient, values: PatientValues) -> None:
    """An existing record is never overwritten by an upload; only its empty fields are filled
    (and copied onto its studies: worklist.patients)."""
    changed = False
    for attr in ("name", "birth_date", "sex"):
        value = getattr(values, attr)
        if value and not getattr(patient, attr):
            setattr(patient, attr, value)
            changed = True
    if changed:
        patient_save(patient=patient)


def patients_resolve_many(values: list[PatientValues]) -> dict[str, Patient]:
    """patient_id -> Patient, creating the missing ones in one insert. A concurrent upload
    creating the same patient raises IntegrityError (the caller falls back)."""
    by_id = {v.patient_id: v for v in values}
    patients = {
        p.patient_id: p for p in Patient.objects.select_for_update().filter(patient_id__in=list(by_id))
    }
    for patient_id, patient in patients.items():
        _patient_fill_gaps(patient, by_id[patient_id])
    new = [
        Patient(patient_id=v.patient_id, name=v.name, birth_date=v.birth_date, sex=v.sex)
        for v in by_id.values()
        if v.patient_id not in patients
    ]
    Patient.objects.bulk_create(new)
    patients.update({p.patient_id: p for p in new})
    return patients


def _study_owner_check(study: Study, plan: Plan) -> None:
    """An upload may join an existing study only if it is the same patient's."""
    if study.patient.patient_id != plan.patient.patient_id:
        raise UploadRejected(
            f"Study {study.study_instance_uid} belongs to another patient "
            f"({study.patient.patient_id}), not {plan.patient.patient_id}: check the file's "
            "PatientID / StudyInstanceUID.",
            status_code=409,
        )


def _study_escalate(study: Study, fields: UploadFields) -> None:
    """A more urgent upload joining a study raises the study's priority (never lowers it)."""
    if fields.priority < study.priority:
        study.priority = fields.priority
        study.save(update_fields=["priority", "updated_at"])


def _study_build(plan: Plan, fields: UploadFields, *, patient: Patient) -> Study:
    meta, xray = plan.decoded.xray.metadata, plan.decoded.xray
    return Study(
        patient=patient,
        **study_patient_copies(patient),
        study_instance_uid=plan.study_uid or _new_uid(),
        accession_number=plan.accession[:64],
        study_date=_dicom_date(header_value(meta, "StudyDate")) or fields.study_date or timezone.localdate(),
        modality=(
            header_value(meta, "Modality")
            or fields.modality
            or ("DX" if xray.source_format == "dicom" else "OT")
        )[:16],
        body_part=plan.body_part[:64],
        body_part_source=plan.body_part_source,
        description=(header_value(meta, "StudyDescription") or fields.description)[:200],
        priority=fields.priority,
        # Created in its final state: no second write when its analyses are queued.
        status=Study.Status.ANALYSING if plan.codes else Study.Status.RECEIVED,
    )


def studies_resolve_many(
    plans: dict[int, Plan],
    *,
    fields: dict[int, UploadFields],
    items: dict[int, BulkUploadItem],
) -> dict[int, Study]:
    """index -> the study each new image joins: by StudyInstanceUID, else by the patient's
    accession number, else a study of its own. New patients and studies go in with one insert
    each. A file whose study belongs to another patient is refused in `items` and left out
    before anything is written for it."""
    studies = _studies_existing(plans)
    accepted: dict[int, Plan] = {}
    for index, plan in plans.items():
        study = studies.get(_study_key(index, plan))
        try:
            if study is not None:
                _study_owner_check(study, plan)
        except UploadRejected as exc:
            items[index] = BulkUploadItem.refused(plan.decoded.filename, exc)
            continue
        accepted[index] = plan
    patients = patients_resolve_many([p.patient for p in accepted.values()])
    placed: dict[int, Study] = {}
    new: list[Study] = []
    for index, plan in accepted.items():
        key = _study_key(index, plan)
        study = studies.get(key)
        if study is None:
            patient = patients[plan.patient.patient_id]
            study = studies[key] = _study_build(plan, fields[index], patient=patient)
            new.append(study)
        elif study.pk is not None:
            _study_escalate(study, fields[index])
        placed[index] = study
    Study.objects.bulk_create(new)
    return placed


def _study_key(index: int, plan: Plan) -> str:
    if plan.study_uid:
        return f"uid:{plan.study_uid}"
    if plan.accession:
        return f"accession:{plan.patient.patient_id}:{plan.accession}"
    return f"own:{index}"


def _studies_existing(plans: dict[int, Plan]) -> dict[str, Study]:
    """The stored studies these plans join, locked, by _study_key."""
    found: dict[str, Study] = {}
    uids = [p.study_uid for p in plans.values() if p.study_uid]
    for study in (
        Study.objects.select_for_update().select_related("patient").filter(study_instance_uid__in=uids)
    ):
        found[f"uid:{study.study_instance_uid}"] = study
    accessions = {
        (p.patient.patient_id, p.accession) for p in plans.values() if p.accession and not p.study_uid
    }
    for patient_id, accession in accessions:  # rare (PNG/JPEG with an accession number)
        joined = (
            Study.objects.select_for_update()
            .select_related("patient")
            .filter(patient__patient_id=patient_id, accession_number=accession)
            .first()
        )
        if joined is not None:
            found[f"accession:{patient_id}:{accession}"] = joined
    return found


def image_build(plan: Plan, *, study: Study, uploaded_by: Any, stored: list[str]) -> Image:
    """An unsaved Image whose file and thumbnail are already written (names added to
    `stored`, for the caller to delete if the transaction fails)."""
    decoded, xray = plan.decoded, plan.decoded.xray
    ext = {"dicom": "dcm", "png": "png", "jpeg": "jpg"}[xray.source_format]
    image = Image(
        study=study,
        sop_instance_uid=decoded.sop_uid,
        series_instance_uid=header_value(xray.metadata, "SeriesInstanceUID"),
        original_filename=(decoded.filename or "")[:255],
        format=xray.source_format,
        dicom_header=xray.metadata,
        decode_notes=list(xray.notes),
        size_bytes=decoded.size,
        sha256=decoded.sha256,
        height=xray.shape[0],
        width=xray.shape[1],
        view_position=header_value(xray.metadata, "ViewPosition")[:16],
        recognition=plan.recognition,
        uploaded_by=uploaded_by if getattr(uploaded_by, "is_authenticated", False) else None,
    )
    field_file_save(image.file, f"{decoded.sop_uid}.{ext}", decoded.content(), stored)
    field_file_save(image.thumbnail, f"{decoded.sha256[:16]}.jpg", ContentFile(decoded.thumbnail), stored)
    return image
