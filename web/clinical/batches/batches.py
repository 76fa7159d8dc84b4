"""Batches: many files imported at once (browser, .zip archive, server folder), each file
accepted, recognised as a duplicate or refused with its reason, and their analyses run now or
in the nightly window (RADTRIAGE_NIGHT_WINDOW, local time), on the batch queue.

The files go through the one upload path (images_upload_many) in chunks, so memory holds a
chunk, not the archive. The analyses are always stored first and sent only once they carry
their batch (Analysis.batch), so every result counts towards its batch's progress.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import PurePosixPath
from typing import Any, Protocol

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from web.clinical.analysis.jobs import analyses_dispatch, analyses_run
from web.clinical.audit.records import audit_record
from web.clinical.batches.summary import batch_eta, batch_positives
from web.clinical.events import GroupListener, batch_event_publish, batch_group
from web.clinical.ingest.archive_safety import Member
from web.clinical.ingest.parts import BulkUploadItem, UploadFields, UploadResult, patient_is_unidentified
from web.clinical.ingest.uploads import images_upload_many
from web.clinical.models import Analysis, Batch, BatchItem
from web.clinical.worklist.states import studies_follow_ai

log = logging.getLogger(__name__)

# batch_wait reads the database at least this often, events or not (no layer, Redis down).
BATCH_WAIT_POLL_SECONDS = 0.5
# Files per call of the upload service: bounds memory, and lets the page show progress.
IMPORT_CHUNK = 50

PATIENT_FROM_CSV = "patients.csv"
PATIENT_FROM_NONE = "unidentified"  # no patient fields: filed under a generated ID (parts.py)
PATIENT_FROM_HEADER = "DICOM header"
PATIENT_FROM_FORM = "form"


class BatchFiles(Protocol):
    """archive_safety.ZipFiles / FolderFiles / UploadedFiles."""

    patients: dict[str, bytes]
    count: int

    def members(self) -> Iterator[Member]: ...


# --------------------------------------------------------------------------- night window


def night_window() -> tuple[dt.time, dt.time]:
    start, end = settings.RADTRIAGE_NIGHT_WINDOW.split("-")
    return dt.time.fromisoformat(start), dt.time.fromisoformat(end)


def in_night_window(now: dt.datetime) -> bool:
    """Whether `now` (aware) falls inside the night window, in the site's time zone."""
    start, end = night_window()
    local = timezone.localtime(now).time()
    if start < end:
        return start <= local < end
    return local >= start or local < end  # the window spans midnight


def night_window_end(moment: dt.datetime) -> dt.datetime:
    """The end of the first window's end at or after `moment` (aware, local time zone)."""
    _, end = night_window()
    local = timezone.localtime(moment)
    candidate = local.replace(hour=end.hour, minute=end.minute, second=0, microsecond=0)
    if candidate <= local:
        candidate += dt.timedelta(days=1)
    return candidate


# --------------------------------------------------------------------------- import


def patients_csv_parse(data: bytes) -> dict[str, UploadFields]:
    """patients.csv (file, patient_id, name, birth date, sex, accession) -> file name (lower
    case, no folder) -> the fields. Headers are matched loosely ('Birth date' = birth_date)."""
    text = data.decode("utf-8-sig", errors="replace")
    rows: dict[str, UploadFields] = {}
    for raw in csv.DictReader(io.StringIO(text)):
        row = {(k or "").strip().lower().replace(" ", "_"): (v or "").strip() for k, v in raw.items()}
        name = row.get("file") or row.get("filename") or ""
        if not name:
            continue
        rows[PurePosixPath(name.replace("\\", "/")).name.lower()] = UploadFields(
            patient_id=row.get("patient_id", ""),
            patient_name=row.get("name") or row.get("patient_name", ""),
            birth_date=_date_or_none(row.get("birth_date") or row.get("dob") or ""),
            sex=(row.get("sex", "")[:1]).upper(),
            accession_number=row.get("accession") or row.get("accession_number", ""),
        )
    return rows


def _date_or_none(text: str) -> dt.date | None:
    for fmt in ("%Y-%m-%d", "%Y%m%d", "%d/%m/%Y"):
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    return None


def _patient_for(
    member: Member, *, csvs: dict[str, dict[str, UploadFields]], form: UploadFields | None
) -> tuple[UploadFields, str]:
    """The fields for one file and where its patient comes from."""
    path = PurePosixPath(member.name.replace("\\", "/"))
    if member.data is not None and member.data[128:132] == b"DICM":
        return form or UploadFields(), PATIENT_FROM_HEADER  # the header wins where it has a value
    row = csvs.get(str(path.parent), {}).get(path.name.lower())
    if row is not None and row.patient_id:
        base = form or UploadFields()
        return (
            UploadFields(
                **{
                    **base.__dict__,
                    **{k: v for k, v in row.__dict__.items() if v not in ("", None)},
                }
            ),
            PATIENT_FROM_CSV,
        )
    if form is not None and form.patient_id:
        return form, PATIENT_FROM_FORM
    # The upload's one patient-ID rule files it under a generated UNIDENTIFIED-... ID.
    return form or UploadFields(), PATIENT_FROM_NONE


def batch_import(
    *,
    files: BatchFiles,
    source: str,
    source_name: str = "",
    conditions: list[str] | None = None,
    overnight: bool = False,
    inline: bool = False,
    fields: UploadFields | None = None,
    uploaded_by: Any = None,
    ip_address: str | None = None,
    chunk: int = IMPORT_CHUNK,
) -> Batch:
    """Import every file of `files` as one Batch; returns it with its counts.

    Each file is accepted, recognised as a duplicate, or refused with its reason (a refused
    file never stops the others). PNG/JPEG files take their patient from a patients.csv in
    their folder, else from `fields` (a browser form), else they are filed as unidentified
    (the upload's one patient-ID rule: web.clinical.ingest.parts.patient_values). The
    analyses go on the batch queue now, or wait for the night window when `overnight`, or,
    `inline`, wait for batch_run_inline in this process: never sent to the workers as well,
    where a running worker would race the inline run for them.
    """
    now = timezone.now()
    batch = Batch.objects.create(
        created_by=uploaded_by if getattr(uploaded_by, "is_authenticated", False) else None,
        ip_address=ip_address,
        source=source,
        source_name=source_name[:255],
        schedule=Batch.Schedule.OVERNIGHT if overnight else Batch.Schedule.NOW,
        state=Batch.State.WAITING if overnight or inline else Batch.State.RUNNING,
        conditions=conditions,
        files_total=files.count,
        started_at=None if overnight else now,
    )
    audit_record(
        actor=uploaded_by,
        action="batch.create",
        obj=batch,
        ip_address=ip_address,
        detail={
            "source": source,
            "source_name": source_name[:255],
            "files": files.count,
            "schedule": batch.schedule,
            "conditions": conditions,
        },
    )
    csvs = {folder: patients_csv_parse(data) for folder, data in files.patients.items()}
    position = 0
    sender = _JobSender(batch)
    try:
        # The first chunk is one job's worth: the workers start while the rest is imported.
        for members in _chunks(files.members(), chunk, first=min(chunk, settings.ANALYSIS_BATCH_SIZE)):
            sender.add(
                _import_chunk(
                    batch,
                    members,
                    first=position,
                    csvs=csvs,
                    form=fields,
                    uploaded_by=uploaded_by,
                    ip_address=ip_address,
                )
            )
            position += len(members)
    finally:
        sender.flush()  # also after a crash: what was committed is sent now, not at the next sweep
    batch.files_total = position
    batch.save(update_fields=["files_total"])
    batch_refresh(batch_id=batch.pk)
    batch.refresh_from_db()
    return batch


def _chunks(members: Iterable[Member], size: int, *, first: int | None = None) -> Iterator[list[Member]]:
    chunk: list[Member] = []
    limit = first or size
    for member in members:
        chunk.append(member)
        if len(chunk) >= limit:
            yield chunk
            chunk, limit = [], size
    if chunk:
        yield chunk


def _import_chunk(
    batch: Batch,
    members: list[Member],
    *,
    first: int,
    csvs: dict[str, dict[str, UploadFields]],
    form: UploadFields | None,
    uploaded_by: Any,
    ip_address: str | None,
) -> list[tuple[int, str]]:
    """Import one chunk of files; returns the (id, condition) of its analyses to send now
    (none for an overnight batch)."""
    readable = [(i, m) for i, m in enumerate(members) if m.data is not None]
    per_file = {i: _patient_for(m, csvs=csvs, form=form) for i, m in readable}
    try:
        results = images_upload_many(
            files=[(m.name, m.data or b"") for _, m in readable],
            fields=[per_file[i][0] for i, _ in readable],
            conditions=batch.conditions,
            queue=settings.QUEUE_BATCH,
            uploaded_by=uploaded_by,
            ip_address=ip_address,
            dispatch=False,
        )
    except Exception as exc:  # noqa: BLE001 - one bad chunk (a bug, a crash) never sinks the batch
        log.exception("Batch %s: files %s-%s could not be imported", batch.pk, first, first + len(members))
        results = [BulkUploadItem(m.name, error=f"It could not be imported ({exc}).") for _, m in readable]
    uploaded = {i: item for (i, _), item in zip(readable, results, strict=True)}
    rows: list[BatchItem] = []
    new_ids: list[int] = []
    for i, member in enumerate(members):
        item = uploaded.get(i)
        if item is None or item.result is None:
            rows.append(
                BatchItem(
                    batch=batch,
                    position=first + i,
                    filename=member.name[:1024],
                    status=BatchItem.Status.REFUSED,
                    reason=member.reason if item is None else item.error,
                )
            )
            continue
        result = item.result
        rows.append(
            BatchItem(
                batch=batch,
                position=first + i,
                filename=member.name[:1024],
                status=BatchItem.Status.ACCEPTED if result.created else BatchItem.Status.DUPLICATE,
                reason="; ".join(result.warnings),
                patient_from=_patient_from(result, per_file[i][1]),
                image=result.image,
            )
        )
        # A duplicate brings only what it adds (conditions never run on it before).
        new_ids.extend(a.pk for a in result.analyses if a.state == Analysis.State.QUEUED)
    with transaction.atomic():
        BatchItem.objects.bulk_create(rows)
        Analysis.objects.filter(pk__in=new_ids, batch__isnull=True).update(batch=batch)
        counts = {s: sum(r.status == s for r in rows) for s in BatchItem.Status.values}
        froms = dict(batch.patients_from or {})
        for row in rows:
            if row.patient_from:
                froms[row.patient_from] = froms.get(row.patient_from, 0) + 1
        batch.accepted += counts[BatchItem.Status.ACCEPTED]
        batch.duplicates += counts[BatchItem.Status.DUPLICATE]
        batch.refused += counts[BatchItem.Status.REFUSED]
        batch.patients_from = froms
        batch.save(update_fields=["accepted", "duplicates", "refused", "patients_from"])
        if batch.schedule == Batch.Schedule.OVERNIGHT and batch.state == Batch.State.WAITING:
            # Its studies wait for the night window, and say so (not "AI analysing" all evening).
            studies_follow_ai(study_ids=_studies_of(Analysis.objects.filter(pk__in=new_ids)))
    if batch.schedule != Batch.Schedule.NOW or batch.state != Batch.State.RUNNING:
        return []  # overnight, or inline (import_batch --inline runs them itself)
    return list(
        Analysis.objects.filter(batch=batch, state=Analysis.State.QUEUED, pk__in=new_ids)
        .order_by("pk")
        .values_list("pk", "condition")
    )


def _patient_from(result: UploadResult, said: str) -> str:
    """Where the file's patient came from, as it turned out (a DICOM header without a
    PatientID leaves the file unidentified too)."""
    return PATIENT_FROM_NONE if patient_is_unidentified(result.image.study.patient.patient_id) else said


def _studies_of(analyses: QuerySet[Analysis]) -> list[int]:
    return list(analyses.order_by().values_list("image__study_id", flat=True).distinct())


class _JobSender:
    """Sends a batch's new analyses to the batch queue as its chunks are imported, in full jobs
    of ANALYSIS_BATCH_SIZE analyses of one condition (one model call each); what is left of
    each condition goes when the import ends, so a chunk of 50 files never ends in a job of 2."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.pending: dict[str, list[int]] = {}

    def add(self, analyses: list[tuple[int, str]]) -> None:
        for pk, condition in analyses:
            self.pending.setdefault(condition, []).append(pk)
        size = settings.ANALYSIS_BATCH_SIZE
        for ids in self.pending.values():
            full = len(ids) - len(ids) % size
            if full:
                analyses_dispatch(analysis_ids=ids[:full], queue=settings.QUEUE_BATCH)
                del ids[:full]

    def flush(self) -> None:
        for ids in self.pending.values():
            if ids:
                analyses_dispatch(analysis_ids=ids, queue=settings.QUEUE_BATCH)
        self.pending.clear()


def _batch_dispatch(batch: Batch, *, analysis_ids: list[int] | None = None) -> int:
    """Send the batch's waiting analyses (or these of them) to the batch queue, one model per
    job. Returns how many were sent."""
    rows = Analysis.objects.filter(batch=batch, state=Analysis.State.QUEUED)
    if analysis_ids is not None:
        rows = rows.filter(pk__in=analysis_ids)
    by_condition: dict[str, list[int]] = {}
    for pk, condition in rows.order_by("pk").values_list("pk", "condition"):
        by_condition.setdefault(condition, []).append(pk)
    for ids in by_condition.values():
        analyses_dispatch(analysis_ids=ids, queue=settings.QUEUE_BATCH)
    return sum(len(ids) for ids in by_condition.values())


# --------------------------------------------------------------------------- overnight

# An inline import (`import_batch --inline`) whose batch made no progress for this long died:
# its process finishes a job every few seconds while it lives.
INLINE_ABANDONED_AFTER = dt.timedelta(minutes=10)


def batches_take_over_abandoned_inline(*, now: dt.datetime) -> list[int]:
    """Hand to the workers the queued analyses of an inline batch whose process is gone (no
    analysis of it finished for INLINE_ABANDONED_AFTER): a killed import loses no job."""
    cutoff = now - INLINE_ABANDONED_AFTER
    taken: list[Batch] = []
    with transaction.atomic():
        candidates = Batch.objects.select_for_update(skip_locked=True).filter(
            schedule=Batch.Schedule.NOW, state=Batch.State.WAITING, created_at__lt=cutoff
        )
        for batch in candidates:
            last = (
                Analysis.objects.filter(batch=batch, finished_at__isnull=False)
                .order_by("-finished_at")
                .values_list("finished_at", flat=True)
                .first()
            )
            if last is not None and last >= cutoff:
                continue
            batch.state = Batch.State.RUNNING
            batch.note = "The inline import stopped before the end; the workers finished it."
            batch.save(update_fields=["state", "note"])
            Analysis.objects.filter(batch=batch, state=Analysis.State.QUEUED).update(enqueued_at=now)
            taken.append(batch)
    for batch in taken:
        sent = _batch_dispatch(batch)
        log.warning("Inline batch %s was abandoned: %d analyses sent to the workers", batch.pk, sent)
        batch_refresh(batch_id=batch.pk)
    return [b.pk for b in taken]


def batches_start_due(*, now: dt.datetime | None = None) -> list[int]:
    """Celery beat, every BATCH_CHECK_INTERVAL: inside the night window, start the overnight
    batches waiting for it (their analyses go on the batch queue); past its end, say of those
    still running that they went on. Returns the ids of the batches started."""
    now = now or timezone.now()
    started: list[int] = []
    if in_night_window(now):
        with transaction.atomic():
            due = list(
                Batch.objects.select_for_update(skip_locked=True).filter(
                    schedule=Batch.Schedule.OVERNIGHT, state=Batch.State.WAITING
                )
            )
            for batch in due:
                batch.state = Batch.State.RUNNING
                batch.started_at = now
                batch.save(update_fields=["state", "started_at"])
                waiting = Analysis.objects.filter(batch=batch, state=Analysis.State.QUEUED)
                waiting.update(enqueued_at=now)
                studies_follow_ai(study_ids=_studies_of(waiting))  # scheduled -> analysing
                started.append(batch.pk)
        for batch in due:
            sent = _batch_dispatch(batch)
            log.info("Overnight batch %s started: %d analyses sent", batch.pk, sent)
            batch_refresh(batch_id=batch.pk)
    started += batches_take_over_abandoned_inline(now=now)
    running = Batch.objects.filter(
        schedule=Batch.Schedule.OVERNIGHT, state=Batch.State.RUNNING, overran_window=False
    )
    for batch in running:
        if batch.started_at and now >= night_window_end(batch.started_at):
            batch.overran_window = True
            batch.note = _overran_note(batch.started_at)
            batch.save(update_fields=["overran_window", "note"])
            batch_refresh(batch_id=batch.pk)
    return started


def _overran_note(started_at: dt.datetime) -> str:
    end = night_window_end(started_at)
    return (
        f"Did not finish within the night window ({settings.RADTRIAGE_NIGHT_WINDOW}, ended "
        f"{timezone.localtime(end):%Y-%m-%d %H:%M}); it goes on until every analysis has run."
    )


# --------------------------------------------------------------------------- progress


def batch_progress(batch: Batch, *, now: dt.datetime | None = None) -> dict[str, Any]:
    """done / total (ended analyses), failed, percent, the positives per condition so far, and
    the time left at the rate measured on this batch (summary.batch_eta: eta_seconds and
    eta_text, "measuring…" until there is a rate). Each progress event carries this."""
    counts = Analysis.objects.filter(batch=batch).aggregate(
        total=Count("pk"),
        succeeded=Count("pk", filter=Q(state=Analysis.State.SUCCEEDED)),
        failed=Count("pk", filter=Q(state=Analysis.State.FAILED)),
    )
    total, failed = counts["total"], counts["failed"]
    done = counts["succeeded"] + failed
    # While files are still being imported the total still grows: never 100 % before the end.
    imported = BatchItem.objects.filter(batch=batch).count() >= batch.files_total
    return {
        "batch": batch.pk,
        "state": batch.state,
        "total": total,
        "done": done,
        "failed": failed,
        "imported": imported,
        "percent": _percent(done=done, total=total, imported=imported),
        **batch_eta(batch, done=done, total=total, now=now),
        "positives": batch_positives(batch),
        "overran_window": batch.overran_window,
        "note": batch.note,
    }


def _percent(*, done: int, total: int, imported: bool) -> float:
    if total == 0:
        return 100.0 if imported else 0.0
    if done >= total and not imported:
        return 99.9  # what is here has run, but files are still coming
    return round(100.0 * done / total, 1)


def batch_refresh(*, batch_id: int) -> dict[str, Any]:
    """Re-count a batch, mark it done when every analysis has ended, and tell its page."""
    with transaction.atomic():
        batch = Batch.objects.select_for_update().get(pk=batch_id)
        progress = batch_progress(batch)
        if (
            batch.state == Batch.State.RUNNING
            and progress["imported"]
            and progress["done"] == progress["total"]
        ):
            batch.state = Batch.State.DONE
            batch.finished_at = timezone.now()
            fields = ["state", "finished_at"]
            if (
                batch.schedule == Batch.Schedule.OVERNIGHT
                and batch.started_at
                and batch.finished_at >= night_window_end(batch.started_at)
            ):
                batch.overran_window = True
                batch.note = _overran_note(batch.started_at)
                fields += ["overran_window", "note"]
            batch.save(update_fields=fields)
            progress = batch_progress(batch)
        batch_event_publish(batch_id=batch.pk, progress=progress)
    return progress


def batches_note_progress(*, analysis_ids: Iterable[int]) -> None:
    """After analyses ended (worker or inline): refresh the batches they belong to."""
    batch_ids = set(
        Analysis.objects.filter(pk__in=list(analysis_ids), batch__isnull=False).values_list(
            "batch_id", flat=True
        )
    )
    for batch_id in sorted(batch_ids):
        batch_refresh(batch_id=batch_id)


def batch_run_inline(*, batch: Batch, on_progress: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Run the batch's waiting analyses in this process, without a worker (one-off imports,
    checks): jobs of ANALYSIS_BATCH_SIZE per condition, as a worker would. The batch stays
    'waiting' until its last job has run, so the sweeper never hands its queued analyses to a
    worker meanwhile."""
    Batch.objects.filter(pk=batch.pk, started_at__isnull=True).update(started_at=timezone.now())
    by_condition: dict[str, list[int]] = {}
    rows = Analysis.objects.filter(batch=batch, state=Analysis.State.QUEUED).order_by("pk")
    for pk, condition in rows.values_list("pk", "condition"):
        by_condition.setdefault(condition, []).append(pk)
    size = settings.ANALYSIS_BATCH_SIZE
    for ids in by_condition.values():
        for start in range(0, len(ids), size):
            chunk = ids[start : start + size]
            analyses_run(analysis_ids=chunk, worker="inline")
            progress = batch_refresh(batch_id=batch.pk)
            if on_progress:
                on_progress(progress)
    Batch.objects.filter(pk=batch.pk, state=Batch.State.WAITING).update(state=Batch.State.RUNNING)
    batch_refresh(batch_id=batch.pk)


def batch_wait(
    *, batch: Batch, timeout: float, on_progress: Callable[[dict[str, Any]], None] | None = None
) -> bool:
    """Block until every analysis of the batch has ended (True) or `timeout` passes (False).
    Woken by the batch's own progress events (each job's end, sent to its page), the last
    result is seen at once, not at the next poll (0.4 s later: a tenth of a 300-image batch);
    the database, the truth, is still read every half second at least."""
    deadline = time.monotonic() + timeout
    last: tuple[int, int] | None = None
    with GroupListener(batch_group(batch.pk)) as listener:
        while True:
            batch.refresh_from_db()
            progress = batch_progress(batch)
            if on_progress and (progress["done"], progress["total"]) != last:
                on_progress(progress)
                last = (progress["done"], progress["total"])
            ended = progress["imported"] and progress["done"] >= progress["total"]
            if ended and batch.state != Batch.State.WAITING:
                return True
            if time.monotonic() > deadline:
                return False
            listener.wait(min(BATCH_WAIT_POLL_SECONDS, max(0.0, deadline - time.monotonic()) + 0.01))
