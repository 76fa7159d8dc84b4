"""Services: every change to clinical data goes through one of these functions.

Upload validation decodes with core.imaging (numpy/pydicom only). The analysis itself runs in
a worker process: `analyses_run` imports core.model_manager/core.analysis inside the function so
that TensorFlow is only ever imported by workers, never by the web process.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import Exists, F, OuterRef, Q
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
from web.clinical.events import analysis_event_publish
from web.clinical.models import Analysis, AuditEvent, Image, Patient, Study, UploadConflict

log = logging.getLogger(__name__)

THUMBNAIL_SIZE = 256


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


# --------------------------------------------------------------------------- audit


def audit_record(**fields: Any) -> AuditEvent:
    """Save one audit row; the arguments are audit_event's."""
    event = audit_event(**fields)
    event.save()
    return event


def audit_event(
    *,
    actor: Any,
    action: str,
    patient: Patient | None = None,
    study: Study | None = None,
    obj: Any = None,
    detail: dict[str, Any] | None = None,
    ip_address: str | None = None,
) -> AuditEvent:
    """An unsaved audit row (for bulk_create); audit_record saves one."""
    is_user = actor is not None and getattr(actor, "is_authenticated", False)
    return AuditEvent(
        actor=actor if is_user else None,
        actor_label=actor.get_username() if is_user else "system",
        action=action,
        patient=patient,
        study=study,
        object_type=type(obj).__name__.lower() if obj is not None else "",
        object_id=str(obj.pk) if obj is not None else "",
        detail=detail or {},
        ip_address=ip_address,
    )


# --------------------------------------------------------------------------- upload


@dataclass(frozen=True)
class _Decoded:
    """A readable radiograph and its identity (checked before anything is stored)."""

    filename: str
    data: bytes
    xray: XRay
    sha256: str
    sop_uid: str


@dataclass(frozen=True)
class _PatientValues:
    patient_id: str
    name: str
    birth_date: dt.date | None
    sex: str


@dataclass(frozen=True)
class _Plan:
    """Where a new image goes and what runs on it (no database access to make)."""

    decoded: _Decoded
    body_part: str
    codes: list[str]
    warnings: list[str]
    patient: _PatientValues
    study_uid: str
    accession: str
    recognition: dict[str, Any]


def _upload_decode(data: bytes, filename: str) -> _Decoded:
    try:
        xray = validate_radiograph(load_xray(data, max_pixels=settings.RADTRIAGE_MAX_PIXELS))
    except XRayDecodeError as exc:
        raise UploadRejected(str(exc)) from None
    sha256 = hashlib.sha256(data).hexdigest()
    sop_uid = _meta(xray.metadata, "SOPInstanceUID") or _uid_from(sha256)
    return _Decoded(filename=filename, data=data, xray=xray, sha256=sha256, sop_uid=sop_uid)


def _upload_plan(decoded: _Decoded, fields: UploadFields, conditions: list[str] | None) -> _Plan:
    meta = decoded.xray.metadata
    recognition = _recognise(decoded.xray)
    body_part, warnings = _body_part_resolve(
        header=normalise_body_part(_meta(meta, "BodyPartExamined")),
        chosen=normalise_body_part(fields.body_part), recognition=recognition)
    codes, condition_warnings = _conditions_resolve(conditions, body_part=body_part)
    return _Plan(decoded=decoded, body_part=body_part, codes=codes,
                 warnings=warnings + condition_warnings,
                 patient=_patient_values(decoded.xray, fields),
                 study_uid=_meta(meta, "StudyInstanceUID") or fields.study_instance_uid.strip(),
                 accession=_meta(meta, "AccessionNumber") or fields.accession_number.strip(),
                 recognition=recognition)


def _recognise(xray: XRay) -> dict[str, Any]:
    """What the image recogniser sees ({} if it cannot run: the analyses then say so)."""
    from core.recognition import recognise

    try:
        seen = recognise(xray.pixels)
    except RadTriageError as exc:
        log.error("The image recogniser could not run at upload: %s", exc)
        return {}
    return {"region": seen.region, "population": seen.population,
            "region_confidence": round(float(seen.region_confidence), 4),
            "age_group": seen.age_group, "description": seen_as(seen)}


def _body_part_resolve(*, header: str, chosen: str,
                       recognition: dict[str, Any]) -> tuple[str, list[str]]:
    """The DICOM header decides; else the uploader's choice; else the recognised region.
    A recogniser that disagrees with the header or the choice is said, not followed."""
    seen = recognition.get("region") or ""
    given = header or chosen
    if given:
        source = "the DICOM header says" if header else "the upload says"
        if seen in REGION_BODY_PART and region_of_body_part(given) not in ("", seen) and not (
                seen == "knee" and region_of_body_part(given) == "limb"):
            return given, [f"The image recogniser sees {recognition['description']}, but "
                           f"{source} body part {given}; {given} was followed."]
        return given, []
    if seen in REGION_BODY_PART:
        return REGION_BODY_PART[seen], [f"Body part recognised from the image: "
                                        f"{recognition['description']}."]
    return "", []


def _conditions_resolve(conditions: list[str] | None, *,
                        body_part: str) -> tuple[list[str], list[str]]:
    """The conditions to run: those asked for, each of which must apply to the body part, or
    (None) all that apply to it."""
    if conditions is None:
        codes = conditions_for_body_part(body_part)
        if not codes:
            what = (f"body part '{body_part}'" if body_part else
                    "an image not recognised as a chest, knee or limb radiograph")
            return [], [f"No RadTriage model applies to {what}: the image was stored without "
                        "AI analysis. Choose a body part to analyse it anyway."]
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


def image_upload(
    *,
    data: bytes,
    filename: str,
    fields: UploadFields,
    conditions: list[str] | None,
    queue: str = settings.QUEUE_INTERACTIVE,
    uploaded_by: Any = None,
    ip_address: str | None = None,
    dispatch: bool = True,
) -> UploadResult:
    """Store one X-ray, file it under its patient and study, and enqueue its analyses.

    conditions: condition codes, or None for "all that apply to the body part".
    A file already stored for the same patient (same bytes, or same SOPInstanceUID and same
    pixels) is recognised and returned with created=False; nothing new is written or enqueued.
    One that clashes with a stored image of another patient, or reuses a SOPInstanceUID for
    other pixels, is refused (409, UploadConflictError) and kept as an UploadConflict for
    review: never merged into another patient's study.
    Raises UploadRejected (4xx) with a message the uploader can act on; on any failure no row
    and no file is left behind. dispatch=False: the caller sends the jobs (images_upload_many).
    """
    decoded = _upload_decode(data, filename)
    identity = _Identity(patient=_patient_values(decoded.xray, fields), fields=fields,
                         uploaded_by=uploaded_by, ip_address=ip_address)
    existing = _stored_copy(decoded, identity)
    if existing is not None:
        return _duplicate(existing, uploaded_by=uploaded_by, ip_address=ip_address)
    plan = _upload_plan(decoded, fields, conditions)
    stored: list[str] = []
    try:
        with transaction.atomic():
            patient = _patient_resolve(plan.patient)
            study = _study_resolve(plan, fields, patient=patient)
            image = _image_build(plan, study=study, uploaded_by=uploaded_by, stored=stored)
            image.save()
            analyses = [
                analysis_enqueue(image=image, condition=code, queue=queue, created_by=uploaded_by,
                                 dispatch=dispatch)
                for code in plan.codes
            ]
            audit_record(actor=uploaded_by, action="image.upload", patient=patient, study=study,
                         obj=image, ip_address=ip_address, detail=_upload_detail(plan))
    except IntegrityError:
        # Lost a race with an identical upload (unique SOPInstanceUID/sha256): that one wins.
        _files_delete(stored)
        existing = _stored_copy(decoded, identity)
        if existing is None:
            raise
        return _duplicate(existing, uploaded_by=uploaded_by, ip_address=ip_address)
    except BaseException:
        _files_delete(stored)
        raise
    return UploadResult(image=image, analyses=analyses, created=True, warnings=plan.warnings)


def _upload_detail(plan: _Plan) -> dict[str, Any]:
    return {"filename": plan.decoded.filename, "sha256": plan.decoded.sha256,
            "conditions": plan.codes}


@dataclass
class BulkUploadItem:
    """One file of a bulk upload: its result, or why it was refused."""

    filename: str
    result: UploadResult | None = None
    error: str = ""
    status_code: int = 201


def images_upload_many(
    *,
    files: Sequence[tuple[str, bytes]],
    fields: UploadFields,
    conditions: list[str] | None,
    queue: str = settings.QUEUE_BATCH,
    uploaded_by: Any = None,
    ip_address: str | None = None,
) -> list[BulkUploadItem]:
    """Store several X-rays with the outcome image_upload gives each (a refused file is
    reported and leaves nothing; the others are kept), then send their analyses as jobs of
    ANALYSIS_BATCH_SIZE, grouped by condition so that each job runs one model.

    The new images go in with a handful of queries for the whole lot. Anything unusual (a
    study identified by accession number only, a concurrent upload of the same patient or
    file) takes the one-file-at-a-time path instead, which settles it exactly as image_upload.
    """
    items: dict[int, BulkUploadItem] = {}
    plans: dict[int, _Plan] = {}
    one_by_one: list[int] = []
    readable = _decode_each(files, items)
    known = _images_find_many(list(readable.values()))
    seen: dict[str, int] = {}
    for index, decoded in readable.items():
        duplicate_of = known.get(decoded.sha256) or known.get(decoded.sop_uid)
        if duplicate_of is not None or decoded.sha256 in seen or decoded.sop_uid in seen:
            one_by_one.append(index)  # recognised as a duplicate there, with its audit
            continue
        seen[decoded.sha256] = seen[decoded.sop_uid] = index
        try:
            plan = _upload_plan(decoded, fields, conditions)
        except UploadRejected as exc:
            items[index] = BulkUploadItem(decoded.filename, error=str(exc),
                                          status_code=exc.status_code)
            continue
        if plan.study_uid:
            plans[index] = plan
        else:
            one_by_one.append(index)
    try:
        try:
            items.update(_images_store_many(plans, fields=fields, queue=queue,
                                            uploaded_by=uploaded_by, ip_address=ip_address))
        except IntegrityError:
            log.info("A concurrent upload overlapped a bulk upload; storing its files one by one")
            one_by_one.extend(plans)
        for index in sorted(one_by_one):
            items[index] = _upload_one_of_many(files[index], fields=fields,
                                               conditions=conditions, queue=queue,
                                               uploaded_by=uploaded_by, ip_address=ip_address)
    finally:
        # Also after a crash half-way: what was committed is sent now, not at the next sweep.
        _dispatch_new(list(items.values()), queue=queue)
    return [items[i] for i in range(len(files))]


def _decode_each(files: Sequence[tuple[str, bytes]],
                 items: dict[int, BulkUploadItem]) -> dict[int, _Decoded]:
    """Decode every file: index -> the readable ones; a refused one gets its item now."""
    readable: dict[int, _Decoded] = {}
    for index, (filename, data) in enumerate(files):
        try:
            readable[index] = _upload_decode(data, filename)
        except UploadRejected as exc:
            items[index] = BulkUploadItem(filename, error=str(exc), status_code=exc.status_code)
    return readable


def _images_find_many(decoded: list[_Decoded]) -> dict[str, int]:
    """sha256 and SOPInstanceUID of the stored images among these -> image id."""
    if not decoded:
        return {}
    rows = Image.objects.filter(Q(sha256__in=[d.sha256 for d in decoded])
                                | Q(sop_instance_uid__in=[d.sop_uid for d in decoded]))
    known: dict[str, int] = {}
    for pk, sha256, sop_uid in rows.values_list("pk", "sha256", "sop_instance_uid"):
        known[sha256] = known[sop_uid] = pk
    return known


def _upload_one_of_many(file: tuple[str, bytes], **kwargs: Any) -> BulkUploadItem:
    filename, data = file
    try:
        result = image_upload(data=data, filename=filename, dispatch=False, **kwargs)
    except UploadRejected as exc:
        return BulkUploadItem(filename, error=str(exc), status_code=exc.status_code)
    return BulkUploadItem(filename, result=result, status_code=201 if result.created else 200)


def _images_store_many(plans: dict[int, _Plan], *, fields: UploadFields, queue: str,
                       uploaded_by: Any, ip_address: str | None) -> dict[int, BulkUploadItem]:
    """The new images of a bulk upload in one transaction, with bulk inserts."""
    if not plans:
        return {}
    items: dict[int, BulkUploadItem] = {}
    stored: list[str] = []
    try:
        with transaction.atomic():
            patients = _patients_resolve_many([p.patient for p in plans.values()])
            placed = _studies_resolve_many(plans, fields=fields, patients=patients, items=items)
            images = {i: _image_build(plans[i], study=study, uploaded_by=uploaded_by,
                                      stored=stored) for i, study in placed.items()}
            Image.objects.bulk_create(images.values())
            analyses = {i: [_analysis_build(image=image, condition=code, queue=queue,
                                            created_by=uploaded_by) for code in plans[i].codes]
                        for i, image in images.items()}
            Analysis.objects.bulk_create([a for group in analyses.values() for a in group])
            _studies_mark_analysing([images[i].study for i, group in analyses.items() if group])
            AuditEvent.objects.bulk_create([
                audit_event(actor=uploaded_by, action="image.upload", patient=image.study.patient,
                            study=image.study, obj=image, ip_address=ip_address,
                            detail=_upload_detail(plans[i])) for i, image in images.items()])
            for group in analyses.values():
                for analysis in group:
                    analysis_event_publish(analysis=analysis, event="queued")
    except BaseException:
        _files_delete(stored)
        raise
    for i, image in images.items():
        items[i] = BulkUploadItem(plans[i].decoded.filename, status_code=201, result=UploadResult(
            image=image, analyses=analyses[i], created=True, warnings=plans[i].warnings))
    return items


def _dispatch_new(items: Any, *, queue: str) -> None:
    """Send the new analyses once they are committed (at once, or when the caller's own
    transaction commits), grouped by condition so that each job runs one model."""
    new_ids: dict[str, list[int]] = {}
    for item in items:
        if item.result is not None and item.result.created:
            for analysis in item.result.analyses:
                new_ids.setdefault(analysis.condition, []).append(analysis.pk)
    for ids in new_ids.values():
        transaction.on_commit(lambda i=ids: analyses_dispatch(analysis_ids=i, queue=queue))


def _meta(meta: dict[str, Any], key: str) -> str:
    value = meta.get(key)
    return str(value).strip() if value not in (None, "") else ""


def _uid_from(sha256: str) -> str:
    from pydicom.uid import generate_uid

    # Deterministic, so the same PNG/JPEG always maps to the same instance UID.
    return str(generate_uid(entropy_srcs=[sha256]))


def _image_find(*, sha256: str, sop_uid: str) -> Image | None:
    # Asked on every upload and almost always empty: a one-table query (PostgreSQL plans the
    # three-table join in over a millisecond); the join only for the rare duplicate.
    found = (Image.objects.filter(Q(sha256=sha256) | Q(sop_instance_uid=sop_uid))
             .values_list("pk", flat=True).first())
    return None if found is None else Image.objects.select_related("study__patient").get(pk=found)


class UploadConflictError(UploadRejected):
    """The file clashes with a stored image of another identity; it is kept for review."""

    def __init__(self, message: str, *, conflict: UploadConflict) -> None:
        super().__init__(message, status_code=409)
        self.conflict = conflict


@dataclass(frozen=True)
class _Identity:
    """Who an upload says the image belongs to, and who sent it."""

    patient: _PatientValues
    fields: UploadFields
    uploaded_by: Any
    ip_address: str | None


def _stored_copy(decoded: _Decoded, identity: _Identity) -> Image | None:
    """The stored image this upload is a copy of, or None if it is new.

    A match on bytes or SOPInstanceUID is a copy only when it is the same patient's and the
    same pixels: anything else is a clash (UploadConflictError), because answering with the
    stored image would hand the uploader another patient's study and drop the new image.
    """
    existing = _image_find(sha256=decoded.sha256, sop_uid=decoded.sop_uid)
    if existing is None:
        return None
    kind = _clash_kind(existing, decoded, patient_id=identity.patient.patient_id)
    if kind is None:
        return existing
    raise _conflict_keep(kind, decoded=decoded, existing=existing, identity=identity)


def _clash_kind(existing: Image, decoded: _Decoded, *, patient_id: str) -> str | None:
    same_file = existing.sha256 == decoded.sha256
    if existing.study.patient.patient_id != patient_id:
        return (UploadConflict.Kind.SAME_FILE_OTHER_PATIENT if same_file
                else UploadConflict.Kind.SAME_UID_OTHER_PATIENT)
    if same_file or _same_pixels(existing, decoded.xray):
        return None  # the same image again (a re-export keeps the pixels): a duplicate
    return UploadConflict.Kind.SAME_UID_OTHER_PIXELS


def _same_pixels(existing: Image, xray: XRay) -> bool:
    """Decoded pixels equal (read only on the rare SOPInstanceUID match with other bytes)."""
    try:
        with existing.file.open("rb") as stored:
            pixels = load_xray(stored.read(), max_pixels=settings.RADTRIAGE_MAX_PIXELS,
                               read_metadata=False).pixels
    except (OSError, XRayDecodeError):
        log.warning("Stored image %s could not be read to compare pixels", existing.pk)
        return False
    return pixels.shape == xray.pixels.shape and bool(np.array_equal(pixels, xray.pixels))


_CONFLICT_MESSAGES = {
    UploadConflict.Kind.SAME_FILE_OTHER_PATIENT:
        "This exact file is already stored for a different patient, not {patient}.",
    UploadConflict.Kind.SAME_UID_OTHER_PATIENT:
        "An image with the same SOPInstanceUID ({uid}) is already stored for a different "
        "patient, not {patient}.",
    UploadConflict.Kind.SAME_UID_OTHER_PIXELS:
        "An image with the same SOPInstanceUID ({uid}) but different pixels is already stored "
        "for patient {patient}.",
}


def _conflict_keep(kind: str, *, decoded: _Decoded, existing: Image,
                   identity: _Identity) -> UploadConflictError:
    """Keep the refused file for review (once per file and claimed patient) and say why."""
    patient_id = identity.patient.patient_id
    claimed = {"patient_id": patient_id, "patient_name": identity.patient.name,
               "study_instance_uid": _meta(decoded.xray.metadata, "StudyInstanceUID")
               or identity.fields.study_instance_uid,
               "accession_number": _meta(decoded.xray.metadata, "AccessionNumber")
               or identity.fields.accession_number}
    stored: list[str] = []
    try:
        with transaction.atomic():
            conflict = (UploadConflict.objects.select_for_update()
                        .filter(sha256=decoded.sha256, claimed_patient_id=patient_id).first())
            if conflict is None:
                conflict = _conflict_build(kind, decoded=decoded, existing=existing,
                                           identity=identity, claimed=claimed, stored=stored)
                conflict.save()
            else:
                conflict.attempts = F("attempts") + 1
                conflict.save(update_fields=["attempts"])
            audit_record(actor=identity.uploaded_by, action="image.upload_conflict",
                         obj=conflict, ip_address=identity.ip_address,
                         detail={"kind": kind, "existing_image": existing.pk,
                                 "filename": decoded.filename, "sha256": decoded.sha256})
    except BaseException:
        _files_delete(stored)
        raise
    log.warning("Upload conflict #%s (%s) with image %s", conflict.pk, kind, existing.pk)
    return UploadConflictError(conflict.message, conflict=conflict)


def _conflict_build(kind: str, *, decoded: _Decoded, existing: Image, identity: _Identity,
                    claimed: dict[str, Any], stored: list[str]) -> UploadConflict:
    conflict = UploadConflict(
        kind=kind, original_filename=(decoded.filename or "")[:255], sha256=decoded.sha256,
        sop_instance_uid=decoded.sop_uid[:64], claimed_patient_id=claimed["patient_id"],
        claimed_fields=claimed, existing_image=existing,
        uploaded_by=identity.uploaded_by
        if getattr(identity.uploaded_by, "is_authenticated", False) else None,
        ip_address=identity.ip_address,
    )
    ext = {"dicom": "dcm", "png": "png", "jpeg": "jpg"}[decoded.xray.source_format]
    conflict.file.save(f"{decoded.sop_uid}.{ext}", ContentFile(decoded.data), save=False)
    stored.append(conflict.file.name)
    # The id is only known after the insert; the message names it so the uploader can quote it.
    conflict.save()
    reason = _CONFLICT_MESSAGES[kind].format(uid=decoded.sop_uid,
                                             patient=claimed["patient_id"])
    conflict.message = (f"Refused: {reason} The file was not added to any study; it is kept "
                        f"for review as upload conflict #{conflict.pk}. Ask an administrator "
                        "to check which patient it belongs to.")
    return conflict


def _duplicate(image: Image, *, uploaded_by: Any, ip_address: str | None) -> UploadResult:
    audit_record(actor=uploaded_by, action="image.upload_duplicate", patient=image.study.patient,
                 study=image.study, obj=image, ip_address=ip_address)
    message = "This image was already uploaded; the stored copy and its analyses are returned."
    return UploadResult(image=image, analyses=list(image.analyses.all()), created=False,
                        warnings=[message])


def _dicom_date(value: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(value[:8], "%Y%m%d").date() if value else None
    except ValueError:
        return None


def _patient_values(xray: XRay, fields: UploadFields) -> _PatientValues:
    meta = xray.metadata
    patient_id = _meta(meta, "PatientID") or fields.patient_id.strip()
    if not patient_id:
        raise UploadRejected(
            "The patient ID (MRN) is missing: the DICOM header has no PatientID and the form "
            "gave no patient_id." if xray.source_format == "dicom" else
            "The patient ID (MRN) is required for PNG/JPEG uploads: fill in patient_id."
        )
    if len(patient_id) > 64:
        raise UploadRejected("The patient ID is longer than 64 characters.")
    sex = (_meta(meta, "PatientSex") or fields.sex or "").upper()[:1]
    return _PatientValues(
        patient_id=patient_id,
        name=(_meta(meta, "PatientName") or fields.patient_name)[:200],
        birth_date=_dicom_date(_meta(meta, "PatientBirthDate")) or fields.birth_date,
        sex=sex if sex in {"M", "F", "O"} else "",
    )


def _patient_resolve(values: _PatientValues) -> Patient:
    patient, created = Patient.objects.get_or_create(
        patient_id=values.patient_id,
        defaults={"name": values.name, "birth_date": values.birth_date, "sex": values.sex},
    )
    if not created:
        _patient_fill_gaps(patient, values)
    return patient


def _patient_fill_gaps(patient: Patient, values: _PatientValues) -> None:
    """An existing record is never overwritten by an upload; only its empty fields are filled."""
    changed = False
    for attr in ("name", "birth_date", "sex"):
        value = getattr(values, attr)
        if value and not getattr(patient, attr):
            setattr(patient, attr, value)
            changed = True
    if changed:
        patient.save()


def _patients_resolve_many(values: list[_PatientValues]) -> dict[str, Patient]:
    """patient_id -> Patient, creating the missing ones in one insert. A concurrent upload
    creating the same patient raises IntegrityError (the caller falls back)."""
    by_id = {v.patient_id: v for v in values}
    patients = {p.patient_id: p for p in Patient.objects.select_for_update()
                .filter(patient_id__in=list(by_id))}
    for patient_id, patient in patients.items():
        _patient_fill_gaps(patient, by_id[patient_id])
    new = [Patient(patient_id=v.patient_id, name=v.name, birth_date=v.birth_date, sex=v.sex)
           for v in by_id.values() if v.patient_id not in patients]
    Patient.objects.bulk_create(new)
    patients.update({p.patient_id: p for p in new})
    return patients


def _study_resolve(plan: _Plan, fields: UploadFields, *, patient: Patient) -> Study:
    study: Study | None = None
    if plan.study_uid:
        study = Study.objects.select_for_update().filter(study_instance_uid=plan.study_uid).first()
    elif plan.accession:
        study = (Study.objects.select_for_update()
                 .filter(patient=patient, accession_number=plan.accession).first())
    if study is not None:
        _study_join(study, patient=patient, fields=fields)
        return study
    study = _study_build(plan, fields, patient=patient)
    study.save()
    return study


def _study_join(study: Study, *, patient: Patient, fields: UploadFields) -> None:
    """An upload joins an existing study: it must be the same patient's; a more urgent upload
    escalates the study's priority."""
    if study.patient_id != patient.pk:
        raise UploadRejected(
            f"Study {study.study_instance_uid} belongs to another patient "
            f"({study.patient.patient_id}), not {patient.patient_id}: check the file's "
            "PatientID / StudyInstanceUID.", status_code=409,
        )
    if fields.priority < study.priority:
        study.priority = fields.priority
        study.save(update_fields=["priority", "updated_at"])


def _study_build(plan: _Plan, fields: UploadFields, *, patient: Patient) -> Study:
    meta, xray = plan.decoded.xray.metadata, plan.decoded.xray
    return Study(
        patient=patient,
        study_instance_uid=plan.study_uid or _uid_from(
            f"study:{patient.patient_id}:{timezone.now()}"),
        accession_number=plan.accession[:64],
        study_date=_dicom_date(_meta(meta, "StudyDate")) or fields.study_date
        or timezone.localdate(),
        modality=(_meta(meta, "Modality") or fields.modality or
                  ("DX" if xray.source_format == "dicom" else "OT"))[:16],
        body_part=plan.body_part[:64],
        description=(_meta(meta, "StudyDescription") or fields.description)[:200],
        priority=fields.priority,
        # Created in its final state: no second write when its analyses are queued.
        status=Study.Status.ANALYSING if plan.codes else Study.Status.RECEIVED,
    )


def _studies_resolve_many(plans: dict[int, _Plan], *, fields: UploadFields,
                          patients: dict[str, Patient],
                          items: dict[int, BulkUploadItem]) -> dict[int, Study]:
    """index -> the study each new image joins (new studies in one insert). A file whose
    study belongs to another patient is refused in `items` and left out."""
    studies = {s.study_instance_uid: s for s in Study.objects.select_for_update()
               .select_related("patient")
               .filter(study_instance_uid__in=[p.study_uid for p in plans.values()])}
    placed: dict[int, Study] = {}
    new: list[Study] = []
    for index, plan in plans.items():
        patient = patients[plan.patient.patient_id]
        study = studies.get(plan.study_uid)
        if study is None:
            study = studies[plan.study_uid] = _study_build(plan, fields, patient=patient)
            new.append(study)
        else:
            try:
                _study_join(study, patient=patient, fields=fields)
            except UploadRejected as exc:
                items[index] = BulkUploadItem(plan.decoded.filename, error=str(exc),
                                              status_code=exc.status_code)
                continue
        placed[index] = study
    Study.objects.bulk_create(new)
    return placed


def _studies_mark_analysing(studies: list[Study]) -> None:
    waiting = {s.pk: s for s in studies
               if s.status in (Study.Status.RECEIVED, Study.Status.AI_COMPLETE)}
    if waiting:
        now = timezone.now()
        Study.objects.filter(pk__in=list(waiting)).update(status=Study.Status.ANALYSING,
                                                          updated_at=now)
        for study in studies:
            if study.pk in waiting:
                study.status, study.updated_at = Study.Status.ANALYSING, now


def _image_build(plan: _Plan, *, study: Study, uploaded_by: Any, stored: list[str]) -> Image:
    """An unsaved Image whose file and thumbnail are already written (names added to
    `stored`, for the caller to delete if the transaction fails)."""
    decoded, xray = plan.decoded, plan.decoded.xray
    ext = {"dicom": "dcm", "png": "png", "jpeg": "jpg"}[xray.source_format]
    image = Image(
        study=study,
        sop_instance_uid=decoded.sop_uid,
        series_instance_uid=_meta(xray.metadata, "SeriesInstanceUID"),
        original_filename=(decoded.filename or "")[:255],
        format=xray.source_format,
        dicom_header=xray.metadata,
        decode_notes=list(xray.notes),
        size_bytes=len(decoded.data),
        sha256=decoded.sha256,
        height=xray.shape[0],
        width=xray.shape[1],
        view_position=_meta(xray.metadata, "ViewPosition")[:16],
        recognition=plan.recognition,
        uploaded_by=uploaded_by if getattr(uploaded_by, "is_authenticated", False) else None,
    )
    image.file.save(f"{decoded.sop_uid}.{ext}", ContentFile(decoded.data), save=False)
    stored.append(image.file.name)
    image.thumbnail.save(f"{decoded.sha256[:16]}.jpg",
                         ContentFile(_thumbnail_jpeg(xray.pixels)), save=False)
    stored.append(image.thumbnail.name)
    return image


def _thumbnail_jpeg(pixels: np.ndarray) -> bytes:
    """A preview for the worklist and the study page's heat-map view (never for reading).
    OpenCV area averaging and JPEG: a fraction of a millisecond on every upload."""
    import cv2

    height, width = pixels.shape[:2]
    scale = min(1.0, THUMBNAIL_SIZE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = pixels if scale == 1.0 else cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    ok, buffer = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise ValueError("JPEG encoding of the thumbnail failed")
    return buffer.tobytes()


def _files_delete(names: list[str]) -> None:
    for name in names:
        try:
            default_storage.delete(name)
        except OSError:
            log.warning("Could not remove %s after a failed upload", name, exc_info=True)


# --------------------------------------------------------------------------- analyses


def analysis_enqueue(
    *,
    image: Image,
    condition: str,
    queue: str = settings.QUEUE_INTERACTIVE,
    created_by: Any = None,
    model_id: str = "",
    dispatch: bool = True,
) -> Analysis:
    """Create a queued Analysis; its job is sent to the broker after the transaction commits.

    dispatch=False leaves the sending to the caller (bulk uploads send one job per batch of
    analyses); if the caller never does, the sweeper sends it: the row is the truth.
    """
    analysis = _analysis_build(image=image, condition=condition, queue=queue,
                               created_by=created_by, model_id=model_id)
    analysis.save()
    _studies_mark_analysing([image.study])
    if dispatch:
        transaction.on_commit(lambda: analyses_dispatch(analysis_ids=[analysis.pk], queue=queue))
    analysis_event_publish(analysis=analysis, event="queued")
    return analysis


def image_analyses_request(*, image: Image, conditions: list[str], queue: str, model_id: str,
                           actor: Any, ip_address: str | None) -> list[Analysis]:
    """Run (again) chosen conditions on a stored image. Each must apply to the image's body
    part (UploadRejected otherwise), as at upload: a knee model never runs on a chest film."""
    codes, _ = _conditions_resolve(conditions, body_part=image.study.body_part)
    with transaction.atomic():
        analyses = [analysis_enqueue(image=image, condition=code, queue=queue, created_by=actor,
                                     model_id=model_id) for code in codes]
        audit_record(actor=actor, action="analysis.request", patient=image.study.patient,
                     study=image.study, obj=image, ip_address=ip_address,
                     detail={"conditions": codes})
    return analyses


def _analysis_build(*, image: Image, condition: str, queue: str, created_by: Any = None,
                    model_id: str = "") -> Analysis:
    get_condition(condition)
    if queue not in (settings.QUEUE_INTERACTIVE, settings.QUEUE_BATCH):
        raise ValueError(f"Unknown analysis queue '{queue}'.")
    return Analysis(
        image=image,
        condition=condition,
        requested_model_id=model_id,
        queue=queue,
        state=Analysis.State.QUEUED,
        enqueued_at=timezone.now(),
        created_by=created_by if getattr(created_by, "is_authenticated", False) else None,
    )


def analyses_dispatch(*, analysis_ids: Sequence[int], queue: str) -> None:
    """Send the jobs (ids only) to the broker: one `analyze` job per id on the interactive
    queue (a person is waiting for each), jobs of up to ANALYSIS_BATCH_SIZE ids on the batch
    queue (one model call for many images). If the broker is down the rows stay queued and
    the sweeper sends them again later: the database, not the broker, is the truth."""
    from worker.tasks import analyze, analyze_batch

    size = 1 if queue == settings.QUEUE_INTERACTIVE else settings.ANALYSIS_BATCH_SIZE
    ids = list(analysis_ids)
    for start in range(0, len(ids), size):
        chunk = ids[start:start + size]
        try:
            if len(chunk) == 1:
                analyze.apply_async(args=[chunk[0]], queue=queue)
            else:
                analyze_batch.apply_async(args=[chunk], queue=queue)
        except Exception:  # noqa: BLE001 - any broker failure: the sweeper recovers it
            log.error("Could not enqueue analyses %s on %s; the sweeper will retry", chunk,
                      queue, exc_info=True)


def analysis_run(*, analysis_id: int, worker: str = "") -> Analysis | None:
    """Run one analysis job (worker side); see analyses_run."""
    done = analyses_run(analysis_ids=[analysis_id], worker=worker)
    return done[0] if done else None


def analyses_run(*, analysis_ids: Sequence[int], worker: str = "") -> list[Analysis]:
    """Run analysis jobs (worker side), one model call per condition and model for the lot.

    Idempotent: a job already finished is left alone. Permanent problems (unreadable image,
    body part mismatch, unknown model, bad registry) mark that row failed with their message
    and the others go on. Anything else propagates, for the task to retry; rows finished
    before it stay finished, so a retry runs only the rest.
    """
    claimed = _analyses_claim(analysis_ids=analysis_ids, worker=worker)
    done: list[Analysis] = []
    ready: dict[tuple[str, str], list[tuple[Analysis, XRay]]] = {}
    for analysis in claimed:
        try:
            xray = _analysis_xray(analysis)
        except (RadTriageError, FileNotFoundError) as exc:
            done.append(_analysis_fail_permanently(analysis, exc))
            continue
        key = (analysis.condition, analysis.requested_model_id)
        ready.setdefault(key, []).append((analysis, xray))
    for (condition, model_id), group in ready.items():
        done.extend(_analyses_compute_and_store(group, condition=condition, model_id=model_id))
    return done


def _analyses_claim(*, analysis_ids: Sequence[int], worker: str) -> list[Analysis]:
    claimed: list[Analysis] = []
    with transaction.atomic():
        rows = {a.pk: a for a in Analysis.objects.select_for_update().select_related("image__study")
                .filter(pk__in=list(analysis_ids)).order_by("pk")}
        now = timezone.now()
        for analysis_id in dict.fromkeys(analysis_ids):
            analysis = rows.get(analysis_id)
            if analysis is None:
                log.warning("Analysis %s no longer exists; job dropped", analysis_id)
            elif analysis.state in (Analysis.State.SUCCEEDED, Analysis.State.FAILED):
                log.info("Analysis %s already %s; duplicate delivery ignored", analysis_id,
                         analysis.state)
            elif analysis.attempts >= settings.ANALYSIS_MAX_RETRIES + 1:
                # A job that keeps killing its worker (out of memory...) must not loop forever.
                _analysis_mark_failed(analysis, message=(
                    f"The analysis was interrupted {analysis.attempts} times (worker lost or "
                    "timed out); giving up. Check the worker logs, then re-run it."))
            else:
                analysis.state = Analysis.State.RUNNING
                analysis.attempts += 1
                analysis.started_at = now
                analysis.worker = worker[:200]
                claimed.append(analysis)
        # One UPDATE for the lot (the rows are locked: attempts + 1 matches the objects).
        Analysis.objects.filter(pk__in=[a.pk for a in claimed]).update(
            state=Analysis.State.RUNNING, attempts=F("attempts") + 1, started_at=now,
            worker=worker[:200])
        for analysis in claimed:
            analysis_event_publish(analysis=analysis, event="started")
    return claimed


def _analysis_xray(analysis: Analysis) -> XRay:
    from core.analysis import check_body_part

    with default_storage.open(analysis.image.file.name, "rb") as handle:
        data = handle.read()
    # The header summary was read and stored at upload: only the pixels are needed again.
    xray = dataclasses.replace(
        load_xray(data, max_pixels=settings.RADTRIAGE_MAX_PIXELS, read_metadata=False),
        metadata=dict(analysis.image.dicom_header or {}))
    check_body_part(xray, condition=analysis.condition)
    return xray


def _analysis_fail_permanently(analysis: Analysis, exc: Exception) -> Analysis:
    message = (str(exc) if isinstance(exc, RadTriageError)
               else "The stored image file is missing; upload it again.")
    return analysis_fail(analysis_id=analysis.pk, message=message) or analysis


def _analyses_compute_and_store(group: list[tuple[Analysis, XRay]], *, condition: str,
                                model_id: str) -> list[Analysis]:
    # Imported here, never at module level: TensorFlow must stay out of the web process.
    from core.analysis import analyze_xrays
    from core.model_manager import get_manager

    try:
        outcomes = analyze_xrays([xray for _, xray in group], condition=condition,
                                 manager=get_manager(settings.RADTRIAGE_REGISTRY),
                                 model_id=model_id or None, allow_body_part_mismatch=True)
    except RadTriageError as exc:  # unknown model, unreadable registry: the same for all
        return [_analysis_fail_permanently(analysis, exc) for analysis, _ in group]
    stored: dict[int, str] = {}
    try:
        _heatmaps_store([(analysis, outcome.heatmap)
                         for (analysis, _), outcome in zip(group, outcomes, strict=True)], stored)
        return _analyses_complete(
            [(analysis, outcome.to_dict(), stored[analysis.pk])
             for (analysis, _), outcome in zip(group, outcomes, strict=True)])
    except BaseException:
        _files_delete(list(stored.values()))
        raise


def _heatmaps_store(maps: list[tuple[Analysis, np.ndarray]], stored: dict[int, str]) -> None:
    """Each raw Grad-CAM map at the model's resolution, as an 8-bit grayscale PNG (a few KB);
    stored[analysis id] = its file name, also for the caller to delete on a later failure.

    Written by a few threads at once: a file's creation mostly waits on the disk, and one
    batch job writes one per image. Overlays are drawn from these maps on request
    (selectors.analysis_heatmap_overlay_png): most analyses are never opened, and a
    full-resolution overlay PNG costs more than the model.
    """
    from concurrent.futures import ThreadPoolExecutor

    from core.overlay import heatmap_png

    def save(analysis: Analysis, heatmap: np.ndarray) -> None:
        clean = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float32)), 0.0, 1.0)
        name = f"heatmaps/{analysis.image.study_id}/analysis-{analysis.pk}-raw.png"
        stored[analysis.pk] = default_storage.save(name, ContentFile(heatmap_png(clean)))

    with ThreadPoolExecutor(max_workers=min(8, len(maps)) or 1) as pool:
        futures = [pool.submit(save, analysis, heatmap) for analysis, heatmap in maps]
    for future in futures:
        future.result()  # the first failure, if any, after every write has ended


def _analyses_complete(results: list[tuple[Analysis, dict[str, Any], str]]) -> list[Analysis]:
    """Store the results in one transaction. A row that a duplicate delivery finished first
    keeps that result; ours is dropped with its file."""
    done: list[Analysis] = []
    finished: list[Analysis] = []
    with transaction.atomic():
        rows = {a.pk: a for a in Analysis.objects.select_for_update()
                .select_related("image__study__patient")
                .filter(pk__in=[a.pk for a, _, _ in results]).order_by("pk")}
        old_files: list[str] = []
        for claimed, outcome, heatmap_name in results:
            analysis = rows.get(claimed.pk)
            if analysis is None or analysis.state == Analysis.State.SUCCEEDED:
                transaction.on_commit(lambda n=heatmap_name: _files_delete([n]))
                done.extend([analysis] if analysis is not None else [])
                continue
            old_files.extend(n for n in (analysis.heatmap_raw.name,) if n)
            _analysis_apply_outcome(analysis, outcome, heatmap_name=heatmap_name)
            # A row at a time: bulk_update's CASE expressions cost more than the round trips.
            analysis.save(update_fields=OUTCOME_FIELDS)
            done.append(analysis)
            finished.append(analysis)
        studies_refresh(studies=[a.image.study for a in finished])
        AuditEvent.objects.bulk_create([
            audit_event(actor=None, action="analysis.succeeded", patient=a.image.study.patient,
                        study=a.image.study, obj=a,
                        detail={"model_id": a.model_id, "is_placeholder": a.is_placeholder})
            for a in finished
        ])
        for analysis in finished:
            analysis_event_publish(analysis=analysis, event="finished")
        transaction.on_commit(lambda: _files_delete(old_files))
    return done


OUTCOME_FIELDS = [
    "state", "probability", "threshold", "positive", "model_id", "model_sha256", "architecture",
    "is_placeholder", "placeholder_reason", "experimental", "experimental_reason",
    "gradcam_method", "gradcam_layer", "notes", "heatmap_raw", "error_message", "finished_at",
    "applicable", "not_applicable_reason", "applicability", "heatmap_peak",
]


def _analysis_apply_outcome(analysis: Analysis, out: dict[str, Any], *, heatmap_name: str) -> None:
    analysis.state = Analysis.State.SUCCEEDED
    analysis.probability = float(out["probability"])
    analysis.threshold = _float_or_none(out.get("threshold"))
    analysis.applicable = bool(out.get("applicable", True))
    analysis.not_applicable_reason = str(out.get("not_applicable_reason") or "")
    analysis.applicability = dict(out.get("applicability") or {})
    analysis.heatmap_peak = out.get("heatmap_peak")
    # Outside the model's population the label means nothing: neither positive nor negative.
    analysis.positive = bool(out.get("positive")) if analysis.applicable else None
    analysis.model_id = str(out.get("model_id") or "")[:128]
    analysis.model_sha256 = str(out.get("model_sha256") or "")[:64]
    analysis.architecture = str(out.get("architecture") or "")[:32]
    analysis.is_placeholder = bool(out.get("is_placeholder"))
    analysis.placeholder_reason = str(out.get("placeholder_reason") or "")
    analysis.experimental = bool(out.get("experimental"))
    analysis.experimental_reason = str(out.get("experimental_reason") or "")
    analysis.gradcam_method = str(out.get("gradcam_method") or "")[:32]
    analysis.gradcam_layer = str(out.get("gradcam_layer") or "")[:128]
    analysis.notes = list(out.get("notes") or [])
    analysis.heatmap_raw.name = heatmap_name
    analysis.error_message = ""
    analysis.finished_at = timezone.now()


def _float_or_none(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def analysis_fail(*, analysis_id: int, message: str) -> Analysis | None:
    """Mark an analysis failed with a message the user sees, unless it already ended: a batch
    job abandoned on a temporary problem must not replace the reason one of its images
    already failed for (a corrupt file, say) or undo a result."""
    with transaction.atomic():
        analysis = (Analysis.objects.select_for_update().select_related("image__study")
                    .filter(pk=analysis_id).first())
        if analysis is None or analysis.state in (Analysis.State.SUCCEEDED,
                                                   Analysis.State.FAILED):
            return analysis
        _analysis_mark_failed(analysis, message=message)
    return analysis


def _analysis_mark_failed(analysis: Analysis, *, message: str) -> None:
    analysis.state = Analysis.State.FAILED
    analysis.error_message = message
    analysis.finished_at = timezone.now()
    analysis.save(update_fields=["state", "error_message", "finished_at"])
    _study_refresh_status(analysis.image.study)
    analysis_event_publish(analysis=analysis, event="failed")


def analysis_mark_retrying(*, analysis_id: int, message: str) -> None:
    """A transient error: the job goes back to queued while its retry waits (backoff)."""
    with transaction.atomic():
        updated = Analysis.objects.filter(
            pk=analysis_id, state__in=[Analysis.State.RUNNING, Analysis.State.QUEUED]
        ).update(state=Analysis.State.QUEUED, enqueued_at=timezone.now(),
                 error_message=f"Retrying after a temporary problem: {message}"[:2000])
        if updated:
            analysis = Analysis.objects.select_related("image__study").get(pk=analysis_id)
            analysis_event_publish(analysis=analysis, event="queued")


def _study_refresh_status(study: Study) -> None:
    studies_refresh(studies=[study])


def studies_refresh(*, studies: list[Study]) -> None:
    """After analyses end: each study's AI flag (any real finding: succeeded, positive, in the
    model's population, neither a placeholder's nor an experimental model's), and its status
    while the AI still works on it (ANALYSING while any analysis is queued or running, then
    AI_COMPLETE).

    Four queries at most for any number of studies; the objects passed in are updated too
    (several may stand for one study), so events built from them say what the database says.
    """
    by_pk = {s.pk: s for s in studies}
    if not by_pk:
        return
    now = timezone.now()
    # Analysis.is_finding as a query: a not-applicable result is stored with positive=None.
    flagged = _studies_with(list(by_pk), state=Analysis.State.SUCCEEDED, positive=True,
                            is_placeholder=False, experimental=False)
    _studies_set(studies, "ai_flagged", {pk: pk in flagged for pk in by_pk}, now=now)
    watched = [pk for pk, s in by_pk.items()
               if s.status in (Study.Status.RECEIVED, Study.Status.ANALYSING)]
    if watched:
        busy = _studies_with(watched, state__in=[Analysis.State.QUEUED, Analysis.State.RUNNING])
        _studies_set(studies, "status", {pk: Study.Status.ANALYSING if pk in busy
                                         else Study.Status.AI_COMPLETE for pk in watched},
                     now=now)


def _studies_with(study_ids: list[int], **analysis_filters: Any) -> set[int]:
    """The studies among these with an analysis matching the filters. Starts from the
    studies' images (a few index probes), never from the analysis table, which grows forever."""
    matching = Analysis.objects.filter(image=OuterRef("pk"), **analysis_filters)
    return set(Image.objects.filter(study_id__in=study_ids).filter(Exists(matching))
               .order_by().values_list("study_id", flat=True).distinct())


def _studies_set(studies: list[Study], field: str, wanted: dict[int, Any], *,
                 now: dt.datetime) -> None:
    """Write `field` where it differs from `wanted` (one UPDATE per distinct value)."""
    current = {s.pk: getattr(s, field) for s in studies}
    changed = {pk for pk, value in wanted.items() if current[pk] != value}
    for value in {wanted[pk] for pk in changed}:
        Study.objects.filter(pk__in=[pk for pk in changed if wanted[pk] == value]).update(
            **{field: value, "updated_at": now})
    for study in studies:
        if study.pk in changed:
            setattr(study, field, wanted[study.pk])
            study.updated_at = now


def analyses_requeue_stuck(*, queued_after: float, running_after: float) -> list[int]:
    """The sweeper: send again every job the database says is waiting or running for too long.

    A queued row older than `queued_after` lost its broker message (Redis restarted, enqueue
    failed); a running row older than `running_after` (> the hard time limit) lost its worker.
    Re-sending is safe because `analyses_run` is idempotent.
    """
    now = timezone.now()
    requeued: list[tuple[int, str]] = []
    with transaction.atomic():
        stuck = (
            Analysis.objects.select_for_update(skip_locked=True)
            .select_related("image__study")
            .filter(
                Q(state=Analysis.State.QUEUED, enqueued_at__lt=now - dt.timedelta(
                    seconds=queued_after))
                | Q(state=Analysis.State.QUEUED, enqueued_at__isnull=True)
                | Q(state=Analysis.State.RUNNING, started_at__lt=now - dt.timedelta(
                    seconds=running_after))
            )
            .order_by("enqueued_at")[:500]
        )
        for analysis in stuck:
            was = analysis.state
            analysis.state = Analysis.State.QUEUED
            analysis.enqueued_at = now
            analysis.requeues += 1
            analysis.save(update_fields=["state", "enqueued_at", "requeues"])
            requeued.append((analysis.pk, analysis.queue))
            log.warning("Re-enqueueing analysis %s (was %s)", analysis.pk, was)
        by_queue: dict[str, list[int]] = {}
        for analysis_id, queue in requeued:
            by_queue.setdefault(queue, []).append(analysis_id)
        for queue, ids in by_queue.items():
            transaction.on_commit(
                lambda q=queue, i=ids: analyses_dispatch(analysis_ids=i, queue=q)
            )
    return [analysis_id for analysis_id, _ in requeued]
