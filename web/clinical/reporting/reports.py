"""Study reports: drafted and edited by a radiologist, rendered to PDF by a worker, signed
(which freezes them and sets the study to "reported"); a change after signing is an addendum,
a new version, and the signed ones stay as they were."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from web.clinical.audit.records import audit_record
from web.clinical.dispatch import TASK_RENDER_REPORT, job_send
from web.clinical.files import files_delete
from web.clinical.models import Report, Study

log = logging.getLogger(__name__)

MAX_IMPRESSION_CHARS = 20_000


class ReportError(Exception):
    """The report cannot be changed as asked; `str()` says why, for the radiologist."""

    def __init__(self, message: str, *, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


def report_draft_save(
    *, study_id: int, author: Any, impression: str, ip_address: str | None = None
) -> Report:
    """Save the study's draft: the one being edited, or a new version (an addendum once a
    version is signed). Its PDF is rendered by a worker after the commit."""
    if len(impression) > MAX_IMPRESSION_CHARS:
        raise ReportError(f"The impression is longer than {MAX_IMPRESSION_CHARS:,} characters.")
    with transaction.atomic():
        study = Study.objects.select_for_update().select_related("patient").get(pk=study_id)
        draft = study.reports.filter(state=Report.State.DRAFT).first()
        if draft is None:
            latest = study.reports.aggregate(n=Max("version"))["n"] or 0
            draft = Report(study=study, version=latest + 1, is_addendum=latest > 0, author=author)
        draft.impression = impression
        draft.save()
        audit_record(
            actor=author,
            action="report.draft",
            patient=study.patient,
            study=study,
            obj=draft,
            ip_address=ip_address,
            detail={"version": draft.version, "addendum": draft.is_addendum},
        )
        transaction.on_commit(lambda: report_render_request(report_id=draft.pk))
    return draft


def report_sign(*, report_id: int, signer: Any, ip_address: str | None = None) -> Report:
    """Sign a draft: it can no longer change, and the study is reported."""
    with transaction.atomic():
        report = Report.objects.select_for_update().select_related("study__patient").get(pk=report_id)
        if report.is_signed:
            raise ReportError(
                f"Version {report.version} is already signed and cannot change; write an addendum.",
                status_code=409,
            )
        if not report.impression.strip():
            raise ReportError("The impression is empty: write it before signing.")
        report.state = Report.State.SIGNED
        report.signed_by = signer
        report.signed_at = timezone.now()
        report.save()
        study = report.study
        study.status = Study.Status.REPORTED
        study.save(update_fields=["status", "updated_at"])
        audit_record(
            actor=signer,
            action="report.sign",
            patient=study.patient,
            study=study,
            obj=report,
            ip_address=ip_address,
            detail={"version": report.version, "addendum": report.is_addendum},
        )
        transaction.on_commit(lambda: report_render_request(report_id=report.pk))
    return report


def report_render_request(*, report_id: int) -> None:
    """Ask a worker to render the PDF. If the broker is down the PDF is rendered when it is
    first downloaded instead: nothing waits on this."""
    from django.conf import settings

    try:
        job_send(TASK_RENDER_REPORT, args=[report_id], queue=settings.QUEUE_MAINTENANCE)
    except Exception:  # noqa: BLE001 - any broker failure: rendered on download instead
        log.warning("Could not send report %s to be rendered", report_id, exc_info=True)


def report_text_hash(report: Report) -> str:
    """What the PDF must show: its text, state, signer and time (a signed PDF shows them)."""
    key = "|".join(
        [report.impression, report.state, str(report.signed_by_id or ""), str(report.signed_at or "")]
    )
    return hashlib.sha256(key.encode()).hexdigest()


def report_pdf_is_current(report: Report) -> bool:
    return (
        bool(report.pdf)
        and report.rendered_text_hash == report_text_hash(report)
        and report.pdf.storage.exists(report.pdf.name)
    )


def report_render(*, report_id: int) -> Report:
    """Render (if not already current) and store the version's PDF. Idempotent; a signed
    version's PDF, once rendered, is never replaced."""
    from web.clinical.reporting.pdf import report_pdf_bytes

    report = Report.objects.select_related("study__patient", "author", "signed_by").get(pk=report_id)
    if report_pdf_is_current(report):
        return report
    wanted = report_text_hash(report)
    data = report_pdf_bytes(report)
    stored: list[str] = []
    old = ""
    try:
        with transaction.atomic():
            locked = Report.objects.select_for_update().get(pk=report_id)
            if report_text_hash(locked) != wanted or report_pdf_is_current(locked):
                return locked  # edited (or rendered) meanwhile: the newer render wins
            old = locked.pdf.name if locked.pdf else ""
            name = f"v{locked.version}-{wanted[:12]}.pdf"
            locked.pdf.save(name, ContentFile(data), save=False)
            stored.append(locked.pdf.name)
            locked.pdf_sha256 = hashlib.sha256(data).hexdigest()
            locked.rendered_text_hash = wanted
            locked.render_error = ""
            locked.save(
                update_fields=["pdf", "pdf_sha256", "rendered_text_hash", "render_error", "updated_at"]
            )
    except BaseException:
        files_delete(stored)
        raise
    if old and old != locked.pdf.name:
        files_delete([old])  # a PDF found missing later is simply rendered again
    return locked


def report_pdf_for_download(*, report_id: int, actor: Any, ip_address: str | None = None) -> Report:
    """The version with a current PDF (rendered now if the worker has not yet), audited."""
    report = report_render(report_id=report_id)
    study = report.study
    audit_record(
        actor=actor,
        action="report.download",
        patient=study.patient,
        study=study,
        obj=report,
        ip_address=ip_address,
        detail={"version": report.version, "pdf_sha256": report.pdf_sha256},
    )
    return report
