"""Storing uploads: one file (image_upload) or many at once (images_upload_many)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from web.clinical.events import analysis_event_publish
from web.clinical.models import Analysis, AuditEvent, Image
from web.clinical.services.analyses import analyses_dispatch, analysis_build, analysis_enqueue
from web.clinical.services.audit import audit_event, audit_record
from web.clinical.services.storage import files_delete
from web.clinical.services.studies import studies_mark_analysing
from web.clinical.services.upload_conflicts import Identity, duplicate, stored_copy
from web.clinical.services.upload_parts import (
    BulkUploadItem,
    Decoded,
    Plan,
    UploadFields,
    UploadRejected,
    UploadResult,
    conditions_resolve,
    image_build,
    patient_resolve,
    patient_values,
    patients_resolve_many,
    studies_resolve_many,
    study_resolve,
    upload_decode,
    upload_detail,
    upload_plan,
)

log = logging.getLogger(__name__)


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
    decoded = upload_decode(data, filename)
    identity = Identity(
        patient=patient_values(decoded.xray, fields),
        fields=fields,
        uploaded_by=uploaded_by,
        ip_address=ip_address,
    )
    existing = stored_copy(decoded, identity)
    if existing is not None:
        return _resume(
            duplicate(existing, uploaded_by=uploaded_by, ip_address=ip_address),
            conditions=conditions,
            queue=queue,
            uploaded_by=uploaded_by,
        )
    plan = upload_plan(decoded, fields, conditions)
    stored: list[str] = []
    try:
        with transaction.atomic():
            patient = patient_resolve(plan.patient)
            study = study_resolve(plan, fields, patient=patient)
            image = image_build(plan, study=study, uploaded_by=uploaded_by, stored=stored)
            image.save()
            analyses = [
                analysis_enqueue(
                    image=image, condition=code, queue=queue, created_by=uploaded_by, dispatch=dispatch
                )
                for code in plan.codes
            ]
            audit_record(
                actor=uploaded_by,
                action="image.upload",
                patient=patient,
                study=study,
                obj=image,
                ip_address=ip_address,
                detail=upload_detail(plan),
            )
    except IntegrityError:
        # Lost a race with an identical upload (unique SOPInstanceUID/sha256): that one wins.
        files_delete(stored)
        existing = stored_copy(decoded, identity)
        if existing is None:
            raise
        return _resume(
            duplicate(existing, uploaded_by=uploaded_by, ip_address=ip_address),
            conditions=conditions,
            queue=queue,
            uploaded_by=uploaded_by,
        )
    except BaseException:
        files_delete(stored)
        raise
    return UploadResult(image=image, analyses=analyses, created=True, warnings=plan.warnings)


# A queued job older than this whose image is sent again has probably lost its message (web
# process killed before it sent it, broker restarted): send it again. Younger ones are in flight.
RESEND_WAITING_AFTER = dt.timedelta(seconds=30)


def _resume(
    result: UploadResult, *, conditions: list[str] | None, queue: str, uploaded_by: Any
) -> UploadResult:
    """A file sent again: the conditions it asks for that never ran are added, and its jobs
    still waiting are sent again. Nothing is lost; running a job twice is harmless (the first
    result stands), so this errs on the side of sending."""
    image = result.image
    codes, _ = conditions_resolve(conditions, body_part=image.study.body_part)
    have = {a.condition for a in result.analyses}
    with transaction.atomic():
        added = [
            analysis_enqueue(image=image, condition=code, queue=queue, created_by=uploaded_by, dispatch=False)
            for code in codes
            if code not in have
        ]
    stale = timezone.now() - RESEND_WAITING_AFTER
    resend = [
        a.pk
        for a in result.analyses
        if a.state == Analysis.State.QUEUED and (a.enqueued_at is None or a.enqueued_at < stale)
    ]
    if added or resend:
        analyses_dispatch(analysis_ids=[a.pk for a in added] + resend, queue=queue)
        result.warnings.append(
            f"{len(added)} missing analysis(es) added and {len(resend)} "
            "waiting one(s) sent to the workers again."
        )
    result.analyses.extend(added)
    return result


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
    plans: dict[int, Plan] = {}
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
            plan = upload_plan(decoded, fields, conditions)
        except UploadRejected as exc:
            items[index] = BulkUploadItem(decoded.filename, error=str(exc), status_code=exc.status_code)
            continue
        if plan.study_uid:
            plans[index] = plan
        else:
            one_by_one.append(index)
    try:
        try:
            items.update(
                _images_store_many(
                    plans, fields=fields, queue=queue, uploaded_by=uploaded_by, ip_address=ip_address
                )
            )
        except IntegrityError:
            log.info("A concurrent upload overlapped a bulk upload; storing its files one by one")
            one_by_one.extend(plans)
        for index in sorted(one_by_one):
            items[index] = _upload_one_of_many(
                files[index],
                fields=fields,
                conditions=conditions,
                queue=queue,
                uploaded_by=uploaded_by,
                ip_address=ip_address,
            )
    finally:
        # Also after a crash half-way: what was committed is sent now, not at the next sweep.
        _dispatch_new(list(items.values()), queue=queue)
    return [items[i] for i in range(len(files))]


def _decode_each(files: Sequence[tuple[str, bytes]], items: dict[int, BulkUploadItem]) -> dict[int, Decoded]:
    """Decode every file: index -> the readable ones; a refused one gets its item now."""
    readable: dict[int, Decoded] = {}
    for index, (filename, data) in enumerate(files):
        try:
            readable[index] = upload_decode(data, filename)
        except UploadRejected as exc:
            items[index] = BulkUploadItem(filename, error=str(exc), status_code=exc.status_code)
    return readable


def _images_find_many(decoded: list[Decoded]) -> dict[str, int]:
    """sha256 and SOPInstanceUID of the stored images among these -> image id."""
    if not decoded:
        return {}
    rows = Image.objects.filter(
        Q(sha256__in=[d.sha256 for d in decoded]) | Q(sop_instance_uid__in=[d.sop_uid for d in decoded])
    )
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


def _images_store_many(
    plans: dict[int, Plan], *, fields: UploadFields, queue: str, uploaded_by: Any, ip_address: str | None
) -> dict[int, BulkUploadItem]:
    """The new images of a bulk upload in one transaction, with bulk inserts."""
    if not plans:
        return {}
    items: dict[int, BulkUploadItem] = {}
    stored: list[str] = []
    try:
        with transaction.atomic():
            patients = patients_resolve_many([p.patient for p in plans.values()])
            placed = studies_resolve_many(plans, fields=fields, patients=patients, items=items)
            images = {
                i: image_build(plans[i], study=study, uploaded_by=uploaded_by, stored=stored)
                for i, study in placed.items()
            }
            Image.objects.bulk_create(images.values())
            analyses = {
                i: [
                    analysis_build(image=image, condition=code, queue=queue, created_by=uploaded_by)
                    for code in plans[i].codes
                ]
                for i, image in images.items()
            }
            Analysis.objects.bulk_create([a for group in analyses.values() for a in group])
            studies_mark_analysing([images[i].study for i, group in analyses.items() if group])
            AuditEvent.objects.bulk_create(
                [
                    audit_event(
                        actor=uploaded_by,
                        action="image.upload",
                        patient=image.study.patient,
                        study=image.study,
                        obj=image,
                        ip_address=ip_address,
                        detail=upload_detail(plans[i]),
                    )
                    for i, image in images.items()
                ]
            )
            for group in analyses.values():
                for analysis in group:
                    analysis_event_publish(analysis=analysis, event="queued")
    except BaseException:
        files_delete(stored)
        raise
    for i, image in images.items():
        items[i] = BulkUploadItem(
            plans[i].decoded.filename,
            status_code=201,
            result=UploadResult(image=image, analyses=analyses[i], created=True, warnings=plans[i].warnings),
        )
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
