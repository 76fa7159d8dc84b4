"""The analysis job lifecycle: enqueue, dispatch, claim, run (worker side), complete, fail,
retry. How a lost job is found and sent again: recovery.py."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from core.applicability import CHOSEN_BODY_PART
from core.conditions import (
    get_condition,
)
from core.errors import RadTriageError
from core.imaging import XRay, load_xray
from web.clinical.analysis.outcome import OUTCOME_FIELDS, analysis_apply_outcome
from web.clinical.audit.records import audit_event, audit_record
from web.clinical.dispatch import TASK_ANALYZE, TASK_ANALYZE_BATCH, job_send
from web.clinical.events import analyses_event_publish, analysis_event_publish
from web.clinical.files import files_delete, heatmaps_store
from web.clinical.ingest.parts import conditions_resolve
from web.clinical.models import Analysis, AuditEvent, Image
from web.clinical.registry.operating_points import site_threshold_for_worker
from web.clinical.registry.shared import registry_pull
from web.clinical.rows import rows_update
from web.clinical.worklist.states import studies_mark_analysing, studies_refresh, study_refresh_status

if TYPE_CHECKING:
    from core.analysis import AnalysisOutcome

log = logging.getLogger(__name__)


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
    analysis = analysis_build(
        image=image, condition=condition, queue=queue, created_by=created_by, model_id=model_id
    )
    analysis.save()
    studies_mark_analysing([image.study])
    if dispatch:
        transaction.on_commit(lambda: analyses_dispatch(analysis_ids=[analysis.pk], queue=queue))
    analysis_event_publish(analysis=analysis, event="queued")
    return analysis


def image_analyses_request(
    *, image: Image, conditions: list[str], queue: str, model_id: str, actor: Any, ip_address: str | None
) -> list[Analysis]:
    """Run (again) chosen conditions on a stored image. Each must apply to the image's body
    part (UploadRejected otherwise), as at upload: a knee model never runs on a chest film."""
    codes, _ = conditions_resolve(conditions, body_part=image.study.body_part)
    with transaction.atomic():
        analyses = [
            analysis_enqueue(image=image, condition=code, queue=queue, created_by=actor, model_id=model_id)
            for code in codes
        ]
        audit_record(
            actor=actor,
            action="analysis.request",
            patient=image.study.patient,
            study=image.study,
            obj=image,
            ip_address=ip_address,
            detail={"conditions": codes},
        )
    return analyses


def analysis_build(
    *, image: Image, condition: str, queue: str, created_by: Any = None, model_id: str = ""
) -> Analysis:
    get_condition(condition)
    if queue not in settings.ANALYSIS_QUEUES.values():
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
    size = 1 if queue == settings.QUEUE_INTERACTIVE else settings.ANALYSIS_BATCH_SIZE
    ids = list(analysis_ids)
    for start in range(0, len(ids), size):
        chunk = ids[start : start + size]
        try:
            if len(chunk) == 1:
                job_send(TASK_ANALYZE, args=[chunk[0]], queue=queue)
            else:
                job_send(TASK_ANALYZE_BATCH, args=[chunk], queue=queue)
        except Exception:  # noqa: BLE001 - any broker failure: the sweeper recovers it
            log.error(
                "Could not enqueue analyses %s on %s; the sweeper will retry", chunk, queue, exc_info=True
            )


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
        rows = {
            a.pk: a
            for a in Analysis.objects.select_for_update()
            .select_related("image__study")
            .filter(pk__in=list(analysis_ids))
            .order_by("pk")
        }
        now = timezone.now()
        for analysis_id in dict.fromkeys(analysis_ids):
            analysis = rows.get(analysis_id)
            if analysis is None:
                log.warning("Analysis %s no longer exists; job dropped", analysis_id)
            elif analysis.state in (Analysis.State.SUCCEEDED, Analysis.State.FAILED):
                log.info("Analysis %s already %s; duplicate delivery ignored", analysis_id, analysis.state)
            elif analysis.attempts >= settings.ANALYSIS_MAX_RETRIES + 1:
                # A job that keeps killing its worker (out of memory...) must not loop forever.
                _analysis_mark_failed(
                    analysis,
                    message=(
                        f"The analysis was interrupted {analysis.attempts} times (worker lost or "
                        "timed out); giving up. Check the worker logs, then re-run it."
                    ),
                )
            else:
                analysis.state = Analysis.State.RUNNING
                analysis.attempts += 1
                analysis.started_at = now
                analysis.worker = worker[:200]
                claimed.append(analysis)
        # One UPDATE for the lot (the rows are locked: attempts + 1 matches the objects).
        Analysis.objects.filter(pk__in=[a.pk for a in claimed]).update(
            state=Analysis.State.RUNNING, attempts=F("attempts") + 1, started_at=now, worker=worker[:200]
        )
        analyses_event_publish(analyses=claimed, event="started")
    return claimed


def _analysis_xray(analysis: Analysis) -> XRay:
    from core.analysis import check_body_part

    with default_storage.open(analysis.image.file.name, "rb") as handle:
        data = handle.read()
    # The header summary was read and stored at upload: only the pixels are needed again.
    xray = dataclasses.replace(
        load_xray(data, max_pixels=settings.RADTRIAGE_MAX_PIXELS, read_metadata=False),
        metadata=analysis_metadata(analysis),
    )
    check_body_part(xray, condition=analysis.condition)
    return xray


def analysis_metadata(analysis: Analysis) -> dict[str, Any]:
    """What the applicability check reads of the image: its stored header summary, and the
    body part a person chose at upload (core.applicability.CHOSEN_BODY_PART), which the check
    follows as it follows the header (and the header wins where it names one)."""
    metadata = dict(analysis.image.dicom_header or {})
    study = analysis.image.study
    if study.body_part_source == study.BodyPartSource.UPLOADER and study.body_part:
        metadata[CHOSEN_BODY_PART] = study.body_part
    return metadata


def _analysis_fail_permanently(analysis: Analysis, exc: Exception) -> Analysis:
    message = (
        str(exc) if isinstance(exc, RadTriageError) else "The stored image file is missing; upload it again."
    )
    return analysis_fail(analysis_id=analysis.pk, message=message) or analysis


def _analyses_compute_and_store(
    group: list[tuple[Analysis, XRay]], *, condition: str, model_id: str
) -> list[Analysis]:
    # Imported here, never at module level: TensorFlow must stay out of the web process.
    from core.analysis import analyze_xrays
    from core.model_manager import get_manager

    registry_pull()  # a model activated on another host: run it from the next job
    try:
        outcomes = analyze_xrays(
            [xray for _, xray in group],
            condition=condition,
            manager=get_manager(settings.RADTRIAGE_REGISTRY),
            model_id=model_id or None,
            allow_body_part_mismatch=True,
            # The site's operating point, read per job: a change applies from the next result.
            site_threshold=site_threshold_for_worker(condition=condition),
        )
    except RadTriageError as exc:  # unknown model, unreadable registry: the same for all
        return [_analysis_fail_permanently(analysis, exc) for analysis, _ in group]
    # The heat maps are written before the rows that point at them. _analyses_complete deletes
    # them only when its transaction certainly rolled back; an exception once the commit may
    # have happened (the task terminated on a broker connection loss, a failing on-commit
    # step) must not take a stored result's file: if those rows did not commit after all, no
    # row points at the files and files.media_remove_orphan_files removes them later.
    stored = heatmaps_store(
        [(analysis, outcome.heatmap) for (analysis, _), outcome in zip(group, outcomes, strict=True)]
    )
    return _analyses_complete(
        [
            (analysis, outcome, stored[analysis.pk])
            for (analysis, _), outcome in zip(group, outcomes, strict=True)
        ]
    )


def _analyses_complete(results: list[tuple[Analysis, AnalysisOutcome, str]]) -> list[Analysis]:
    """Store the results in one transaction. A row that a duplicate delivery finished first
    keeps that result; ours is dropped with its file."""
    body_done = False
    try:
        with transaction.atomic():
            done = _analyses_store(results)
            body_done = True  # from here on the commit may happen: the files must stay
    except BaseException:
        if not body_done:  # raised inside the transaction: certainly rolled back
            files_delete([heatmap_name for _, _, heatmap_name in results])
        raise
    return done


def _analyses_store(results: list[tuple[Analysis, AnalysisOutcome, str]]) -> list[Analysis]:
    """_analyses_complete's work, inside its transaction."""
    done: list[Analysis] = []
    finished: list[Analysis] = []
    rows = {
        a.pk: a
        for a in Analysis.objects.select_for_update()
        .select_related("image__study__patient")
        .filter(pk__in=[a.pk for a, _, _ in results])
        .order_by("pk")
    }
    old_files: list[str] = []
    for claimed, outcome, heatmap_name in results:
        analysis = rows.get(claimed.pk)
        if analysis is None or analysis.state == Analysis.State.SUCCEEDED:
            transaction.on_commit(partial(files_delete, [heatmap_name]))
            done.extend([analysis] if analysis is not None else [])
            continue
        old_files.extend(n for n in (analysis.heatmap_raw.name,) if n)
        analysis_apply_outcome(analysis, outcome, heatmap_name=heatmap_name)
        done.append(analysis)
        finished.append(analysis)
    rows_update(finished, OUTCOME_FIELDS)
    studies_refresh(studies=[a.image.study for a in finished])
    AuditEvent.objects.bulk_create(
        [
            audit_event(
                actor=None,
                action="analysis.succeeded",
                patient=a.image.study.patient,
                study=a.image.study,
                obj=a,
                detail={"model_id": a.model_id, "is_placeholder": a.is_placeholder},
            )
            for a in finished
        ]
    )
    analyses_event_publish(analyses=finished, event="finished")
    transaction.on_commit(lambda: files_delete(old_files))
    _results_to_pacs(finished)
    return done


def _results_to_pacs(finished: list[Analysis]) -> None:
    """Queue the C-STORE of the results of images now fully analysed (only when a PACS node
    is configured), in the transaction that stores the results: the send row commits with
    them, and a send whose job is lost after the commit is sent again by the recovery sweep."""
    from web.clinical.dicom.pacs_send import pacs_sends_queue

    if finished and settings.RADTRIAGE_PACS_HOST:
        pacs_sends_queue(image_ids=sorted({a.image_id for a in finished}))


def analysis_fail(*, analysis_id: int, message: str) -> Analysis | None:
    """Mark an analysis failed with a message the user sees, unless it already ended: a batch
    job abandoned on a temporary problem must not replace the reason one of its images
    already failed for (a corrupt file, say) or undo a result."""
    with transaction.atomic():
        analysis = (
            Analysis.objects.select_for_update().select_related("image__study").filter(pk=analysis_id).first()
        )
        if analysis is None or analysis.state in (Analysis.State.SUCCEEDED, Analysis.State.FAILED):
            return analysis
        _analysis_mark_failed(analysis, message=message)
    return analysis


def _analysis_mark_failed(analysis: Analysis, *, message: str) -> None:
    analysis.state = Analysis.State.FAILED
    analysis.error_message = message
    analysis.finished_at = timezone.now()
    analysis.save(update_fields=["state", "error_message", "finished_at"])
    study_refresh_status(analysis.image.study)
    analysis_event_publish(analysis=analysis, event="failed")
    _results_to_pacs([analysis])  # the image's other results may now be complete


def analysis_mark_retrying(*, analysis_id: int, message: str) -> None:
    """A transient error: the job goes back to queued while its retry waits (backoff)."""
    with transaction.atomic():
        updated = Analysis.objects.filter(
            pk=analysis_id, state__in=[Analysis.State.RUNNING, Analysis.State.QUEUED]
        ).update(
            state=Analysis.State.QUEUED,
            enqueued_at=timezone.now(),
            error_message=f"Retrying after a temporary problem: {message}"[:2000],
        )
        if updated:
            analysis = Analysis.objects.select_related("image__study").get(pk=analysis_id)
            analysis_event_publish(analysis=analysis, event="queued")
