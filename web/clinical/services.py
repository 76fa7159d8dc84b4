"""Services: every change to clinical data goes through one of these functions.

Upload validation decodes with core.imaging (numpy/pydicom only). The analysis itself runs in
a worker process: `analysis_run` imports core.model_manager/core.analysis inside the function so
that TensorFlow is only ever imported by workers, never by the web process.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from core.conditions import conditions_for_body_part, get_condition, normalise_body_part
from core.errors import RadTriageError, UnknownConditionError, XRayDecodeError
from core.imaging import XRay, load_xray, validate_radiograph
from web.clinical.events import analysis_event_publish
from web.clinical.models import Analysis, AuditEvent, Image, Patient, Study

log = logging.getLogger(__name__)

THUMBNAIL_SIZE = 256
OVERLAY_ALPHA = 0.4


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


def audit_record(
    *,
    actor: Any,
    action: str,
    patient: Patient | None = None,
    study: Study | None = None,
    obj: Any = None,
    detail: dict[str, Any] | None = None,
    ip_address: str | None = None,
) -> AuditEvent:
    is_user = actor is not None and getattr(actor, "is_authenticated", False)
    return AuditEvent.objects.create(
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


def image_upload(
    *,
    data: bytes,
    filename: str,
    fields: UploadFields,
    conditions: list[str] | None,
    queue: str = settings.QUEUE_INTERACTIVE,
    uploaded_by: Any = None,
    ip_address: str | None = None,
) -> UploadResult:
    """Store one X-ray, file it under its patient and study, and enqueue its analyses.

    conditions: condition codes, or None for "all that apply to the body part".
    A file already stored (same SOPInstanceUID or same bytes) is recognised and returned with
    created=False; nothing new is written or enqueued.
    Raises UploadRejected (4xx) with a message the uploader can act on; on any failure no row
    and no file is left behind.
    """
    try:
        xray = validate_radiograph(load_xray(data, max_pixels=settings.RADTRIAGE_MAX_PIXELS))
    except XRayDecodeError as exc:
        raise UploadRejected(str(exc)) from None

    sha256 = hashlib.sha256(data).hexdigest()
    meta = xray.metadata
    sop_uid = _meta(meta, "SOPInstanceUID") or _uid_from(sha256)
    existing = _image_find(sha256=sha256, sop_uid=sop_uid)
    if existing is not None:
        return _duplicate(existing, uploaded_by=uploaded_by, ip_address=ip_address)

    body_part = normalise_body_part(_meta(meta, "BodyPartExamined") or fields.body_part)
    codes, warnings = _conditions_resolve(conditions, body_part=body_part,
                                          header_body_part=_meta(meta, "BodyPartExamined"))
    stored: list[str] = []
    try:
        with transaction.atomic():
            patient = _patient_resolve(xray, fields)
            study = _study_resolve(xray, fields, patient=patient, body_part=body_part)
            image = _image_create(xray, data=data, filename=filename, sha256=sha256,
                                  sop_uid=sop_uid, study=study, uploaded_by=uploaded_by,
                                  stored=stored)
            analyses = [
                analysis_enqueue(image=image, condition=code, queue=queue, created_by=uploaded_by)
                for code in codes
            ]
            audit_record(actor=uploaded_by, action="image.upload", patient=patient, study=study,
                         obj=image, ip_address=ip_address,
                         detail={"filename": filename, "sha256": sha256, "conditions": codes})
    except IntegrityError:
        # Lost a race with an identical upload (unique SOPInstanceUID/sha256): that one wins.
        _files_delete(stored)
        existing = _image_find(sha256=sha256, sop_uid=sop_uid)
        if existing is None:
            raise
        return _duplicate(existing, uploaded_by=uploaded_by, ip_address=ip_address)
    except BaseException:
        _files_delete(stored)
        raise
    return UploadResult(image=image, analyses=analyses, created=True, warnings=warnings)


def _meta(meta: dict[str, Any], key: str) -> str:
    value = meta.get(key)
    return str(value).strip() if value not in (None, "") else ""


def _uid_from(sha256: str) -> str:
    from pydicom.uid import generate_uid

    # Deterministic, so the same PNG/JPEG always maps to the same instance UID.
    return str(generate_uid(entropy_srcs=[sha256]))


def _image_find(*, sha256: str, sop_uid: str) -> Image | None:
    return (Image.objects.select_related("study__patient")
            .filter(Q(sha256=sha256) | Q(sop_instance_uid=sop_uid)).first())


def _duplicate(image: Image, *, uploaded_by: Any, ip_address: str | None) -> UploadResult:
    audit_record(actor=uploaded_by, action="image.upload_duplicate", patient=image.study.patient,
                 study=image.study, obj=image, ip_address=ip_address)
    message = "This image was already uploaded; the stored copy and its analyses are returned."
    return UploadResult(image=image, analyses=list(image.analyses.all()), created=False,
                        warnings=[message])


def _conditions_resolve(conditions: list[str] | None, *, body_part: str,
                        header_body_part: str) -> tuple[list[str], list[str]]:
    if conditions is None:
        codes = conditions_for_body_part(body_part)
        if not codes:
            where = f"body part '{body_part}'" if body_part else "an image with no body part"
            return [], [f"No RadTriage model applies to {where}: the image was stored without "
                        "AI analysis. Choose conditions explicitly to analyse it anyway."]
        return codes, []
    codes = []
    for code in conditions:
        try:
            condition = get_condition(code)
        except UnknownConditionError as exc:
            raise UploadRejected(str(exc)) from None
        # The header is authoritative (core refuses a mismatch later anyway): say so now.
        if header_body_part and not condition.applies_to(header_body_part):
            raise UploadRejected(
                f"{condition.label} does not apply to this image: its DICOM header says body "
                f"part '{header_body_part}'. Choose a condition for that body part."
            )
        codes.append(condition.code)
    return list(dict.fromkeys(codes)), []


def _dicom_date(value: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(value[:8], "%Y%m%d").date() if value else None
    except ValueError:
        return None


def _patient_resolve(xray: XRay, fields: UploadFields) -> Patient:
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
    name = _meta(meta, "PatientName") or fields.patient_name
    birth = _dicom_date(_meta(meta, "PatientBirthDate")) or fields.birth_date
    sex = (_meta(meta, "PatientSex") or fields.sex or "").upper()[:1]
    sex = sex if sex in {"M", "F", "O"} else ""
    patient, created = Patient.objects.get_or_create(
        patient_id=patient_id, defaults={"name": name[:200], "birth_date": birth, "sex": sex}
    )
    if not created:
        # Fill gaps only: an existing record is never overwritten by an upload.
        changed = False
        for attr, value in (("name", name[:200]), ("birth_date", birth), ("sex", sex)):
            if value and not getattr(patient, attr):
                setattr(patient, attr, value)
                changed = True
        if changed:
            patient.save()
    return patient


def _study_resolve(xray: XRay, fields: UploadFields, *, patient: Patient,
                   body_part: str) -> Study:
    meta = xray.metadata
    uid = _meta(meta, "StudyInstanceUID") or fields.study_instance_uid.strip()
    accession = _meta(meta, "AccessionNumber") or fields.accession_number.strip()
    study: Study | None = None
    if uid:
        study = Study.objects.select_for_update().filter(study_instance_uid=uid).first()
    elif accession:
        study = (Study.objects.select_for_update()
                 .filter(patient=patient, accession_number=accession).first())
    if study is not None:
        if study.patient_id != patient.pk:
            raise UploadRejected(
                f"Study {study.study_instance_uid} belongs to another patient "
                f"({study.patient.patient_id}), not {patient.patient_id}: check the file's "
                "PatientID / StudyInstanceUID.", status_code=409,
            )
        if fields.priority < study.priority:  # a more urgent upload escalates the study
            study.priority = fields.priority
            study.save(update_fields=["priority", "updated_at"])
        return study
    return Study.objects.create(
        patient=patient,
        study_instance_uid=uid or _uid_from(f"study:{patient.patient_id}:{timezone.now()}"),
        accession_number=accession[:64],
        study_date=_dicom_date(_meta(meta, "StudyDate")) or fields.study_date
        or timezone.localdate(),
        modality=(_meta(meta, "Modality") or fields.modality or
                  ("DX" if xray.source_format == "dicom" else "OT"))[:16],
        body_part=body_part[:64],
        description=(_meta(meta, "StudyDescription") or fields.description)[:200],
        priority=fields.priority,
    )


def _image_create(xray: XRay, *, data: bytes, filename: str, sha256: str, sop_uid: str,
                  study: Study, uploaded_by: Any, stored: list[str]) -> Image:
    ext = {"dicom": "dcm", "png": "png", "jpeg": "jpg"}[xray.source_format]
    image = Image(
        study=study,
        sop_instance_uid=sop_uid,
        series_instance_uid=_meta(xray.metadata, "SeriesInstanceUID"),
        original_filename=(filename or "")[:255],
        format=xray.source_format,
        dicom_header=xray.metadata,
        decode_notes=list(xray.notes),
        size_bytes=len(data),
        sha256=sha256,
        height=xray.shape[0],
        width=xray.shape[1],
        view_position=_meta(xray.metadata, "ViewPosition")[:16],
        uploaded_by=uploaded_by if getattr(uploaded_by, "is_authenticated", False) else None,
    )
    image.file.save(f"{sop_uid}.{ext}", ContentFile(data), save=False)
    stored.append(image.file.name)
    image.thumbnail.save(f"{sha256[:16]}.png", ContentFile(_thumbnail_png(xray.pixels)),
                         save=False)
    stored.append(image.thumbnail.name)
    image.save()
    return image


def _thumbnail_png(pixels: np.ndarray) -> bytes:
    from PIL import Image as PILImage

    thumb = PILImage.fromarray(pixels)
    thumb.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    return png_bytes(np.asarray(thumb))


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


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
) -> Analysis:
    """Create a queued Analysis; its job is sent to the broker after the transaction commits."""
    get_condition(condition)
    if queue not in (settings.QUEUE_INTERACTIVE, settings.QUEUE_BATCH):
        raise ValueError(f"Unknown analysis queue '{queue}'.")
    analysis = Analysis.objects.create(
        image=image,
        condition=condition,
        requested_model_id=model_id,
        queue=queue,
        state=Analysis.State.QUEUED,
        enqueued_at=timezone.now(),
        created_by=created_by if getattr(created_by, "is_authenticated", False) else None,
    )
    study = image.study
    if study.status in (Study.Status.RECEIVED, Study.Status.AI_COMPLETE):
        study.status = Study.Status.ANALYSING
        study.save(update_fields=["status", "updated_at"])
    transaction.on_commit(lambda: analysis_dispatch(analysis_id=analysis.pk, queue=queue))
    analysis_event_publish(analysis=analysis, event="queued")
    return analysis


def analysis_dispatch(*, analysis_id: int, queue: str) -> None:
    """Send the job (its id only) to the broker. If the broker is down the row stays queued
    and the sweeper sends it again later: the database, not the broker, is the truth."""
    from worker.tasks import analyze

    try:
        analyze.apply_async(args=[analysis_id], queue=queue)
    except Exception:  # noqa: BLE001 - any broker failure: the sweeper recovers it
        log.error("Could not enqueue analysis %s on %s; the sweeper will retry", analysis_id,
                  queue, exc_info=True)


@dataclass
class _Computed:
    outcome: dict[str, Any]
    overlay_name: str
    raw_name: str


def analysis_run(*, analysis_id: int, worker: str = "") -> Analysis | None:
    """Run one analysis job (worker side). Idempotent: a job already finished is left alone.

    Permanent problems (unreadable image, unknown condition, bad registry) mark the row failed
    with their message. Anything else propagates, for the task to retry.
    """
    analysis = _analysis_claim(analysis_id=analysis_id, worker=worker)
    if analysis is None:
        return None
    try:
        computed = _analysis_compute(analysis)
    except (RadTriageError, FileNotFoundError) as exc:
        message = (str(exc) if isinstance(exc, RadTriageError)
                   else "The stored image file is missing; upload it again.")
        return analysis_fail(analysis_id=analysis_id, message=message)
    return _analysis_complete(analysis_id=analysis_id, computed=computed)


def _analysis_claim(*, analysis_id: int, worker: str) -> Analysis | None:
    with transaction.atomic():
        analysis = (Analysis.objects.select_for_update().select_related("image__study")
                    .filter(pk=analysis_id).first())
        if analysis is None:
            log.warning("Analysis %s no longer exists; job dropped", analysis_id)
            return None
        if analysis.state in (Analysis.State.SUCCEEDED, Analysis.State.FAILED):
            log.info("Analysis %s already %s; duplicate delivery ignored", analysis_id,
                     analysis.state)
            return None
        if analysis.attempts >= settings.ANALYSIS_MAX_RETRIES + 1:
            # A job that keeps killing its worker (out of memory...) must not loop forever.
            _analysis_mark_failed(analysis, message=(
                f"The analysis was interrupted {analysis.attempts} times (worker lost or timed "
                "out); giving up. Check the worker logs, then re-run it."))
            return None
        analysis.state = Analysis.State.RUNNING
        analysis.attempts += 1
        analysis.started_at = timezone.now()
        analysis.worker = worker[:200]
        analysis.save(update_fields=["state", "attempts", "started_at", "worker"])
        analysis_event_publish(analysis=analysis, event="started")
    return analysis


def _analysis_compute(analysis: Analysis) -> _Computed:
    # Imported here, never at module level: TensorFlow must stay out of the web process.
    from core.analysis import analyze_xray
    from core.model_manager import get_manager
    from core.overlay import encode_png, heatmap_png, render_overlay

    with default_storage.open(analysis.image.file.name, "rb") as handle:
        data = handle.read()
    xray = load_xray(data, max_pixels=settings.RADTRIAGE_MAX_PIXELS)
    manager = get_manager(settings.RADTRIAGE_REGISTRY)
    outcome = analyze_xray(xray, condition=analysis.condition, manager=manager,
                           model_id=analysis.requested_model_id or None)
    heatmap = np.clip(np.nan_to_num(np.asarray(outcome.heatmap, dtype=np.float32)), 0.0, 1.0)
    overlay = render_overlay(xray.pixels, heatmap, alpha=OVERLAY_ALPHA)
    base = f"heatmaps/{analysis.image.study_id}/analysis-{analysis.pk}"
    overlay_name = default_storage.save(f"{base}-overlay.png", ContentFile(encode_png(overlay)))
    try:
        raw_name = default_storage.save(f"{base}-raw.png", ContentFile(heatmap_png(heatmap)))
    except BaseException:
        _files_delete([overlay_name])
        raise
    return _Computed(outcome=outcome.to_dict(), overlay_name=overlay_name, raw_name=raw_name)


def _analysis_complete(*, analysis_id: int, computed: _Computed) -> Analysis | None:
    files = [computed.overlay_name, computed.raw_name]
    try:
        with transaction.atomic():
            analysis = (Analysis.objects.select_for_update().select_related("image__study")
                        .filter(pk=analysis_id).first())
            if analysis is None or analysis.state == Analysis.State.SUCCEEDED:
                # A duplicate delivery finished first: keep its result, drop ours.
                _files_delete(files)
                return analysis
            out = computed.outcome
            analysis.state = Analysis.State.SUCCEEDED
            analysis.probability = float(out["probability"])
            analysis.threshold = _float_or_none(out.get("threshold"))
            analysis.positive = bool(out.get("positive"))
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
            old = [n for n in (analysis.heatmap.name, analysis.heatmap_raw.name) if n]
            analysis.heatmap.name = computed.overlay_name
            analysis.heatmap_raw.name = computed.raw_name
            analysis.error_message = ""
            analysis.finished_at = timezone.now()
            analysis.save()
            _study_refresh_status(analysis.image.study)
            audit_record(actor=None, action="analysis.succeeded",
                         patient=analysis.image.study.patient,
                         study=analysis.image.study, obj=analysis,
                         detail={"model_id": analysis.model_id,
                                 "is_placeholder": analysis.is_placeholder})
            analysis_event_publish(analysis=analysis, event="finished")
            transaction.on_commit(lambda: _files_delete(old))
    except BaseException:
        _files_delete(files)
        raise
    return analysis


def _float_or_none(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def analysis_fail(*, analysis_id: int, message: str) -> Analysis | None:
    """Mark an analysis failed with a message the user sees (unless it already succeeded)."""
    with transaction.atomic():
        analysis = (Analysis.objects.select_for_update().select_related("image__study")
                    .filter(pk=analysis_id).first())
        if analysis is None or analysis.state == Analysis.State.SUCCEEDED:
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
    if study.status not in (Study.Status.RECEIVED, Study.Status.ANALYSING):
        return
    pending = Analysis.objects.filter(
        image__study=study, state__in=[Analysis.State.QUEUED, Analysis.State.RUNNING]
    ).exists()
    status = Study.Status.ANALYSING if pending else Study.Status.AI_COMPLETE
    if status != study.status:
        study.status = status
        study.save(update_fields=["status", "updated_at"])


def analyses_requeue_stuck(*, queued_after: float, running_after: float) -> list[int]:
    """The sweeper: send again every job the database says is waiting or running for too long.

    A queued row older than `queued_after` lost its broker message (Redis restarted, enqueue
    failed); a running row older than `running_after` (> the hard time limit) lost its worker.
    Re-sending is safe because `analysis_run` is idempotent.
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
        for analysis_id, queue in requeued:
            transaction.on_commit(
                lambda a=analysis_id, q=queue: analysis_dispatch(analysis_id=a, queue=q)
            )
    return [analysis_id for analysis_id, _ in requeued]
