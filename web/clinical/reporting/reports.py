"""Study reports, which belong to people: only the radiologist who holds the study (its
claim, web.clinical.worklist.claims) starts a draft, and drafting an unclaimed study claims it;
only the draft's author edits and signs it; a colleague is refused (409) with the holder's or
the author's name and goes on only by taking the study over (audited, both names kept).
Drafts are rendered to PDF by a worker. Signing freezes the version and moves the study to
"reported" through the state machine (the one way there); a change after signing is an
addendum, a new version, and the signed ones stay as they were. A report's text is three fields
(clinical information, findings, impression); a report template may fill the empty ones."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import Max, QuerySet
from django.utils import timezone

from web.access import Capability, can
from web.clinical.audit.records import audit_record
from web.clinical.dispatch import TASK_RENDER_REPORT, job_send
from web.clinical.events import study_event_publish
from web.clinical.files import files_delete
from web.clinical.models import Report, ReportTemplate, Study
from web.clinical.worklist.claims import holder_name, study_hold_for_report, study_locked
from web.clinical.worklist.states import AI_STATES, StudyActionRefused, study_transition

log = logging.getLogger(__name__)

MAX_IMPRESSION_CHARS = 20_000  # the most any one of the report's fields holds

# The report's text fields, in the order a report prints them, each under its heading.
REPORT_SECTIONS: tuple[tuple[str, str], ...] = (
    ("clinical_information", "Clinical information"),
    ("findings", "Findings"),
    ("impression", "Impression"),
)


def report_sections(
    report: Report | ReportTemplate, *, leave_out: tuple[str, ...] = ()
) -> list[tuple[str, str]]:
    """(heading, text) of each field that has text, in the order a report prints them."""
    return [
        (heading, getattr(report, name))
        for name, heading in REPORT_SECTIONS
        if name not in leave_out and getattr(report, name).strip()
    ]


class ReportError(StudyActionRefused):
    """The report cannot be changed as asked; `str()` says why, for the radiologist (400, or
    409 when the report's state or its author does not allow it)."""

    def __init__(self, message: str, *, status_code: int = 400) -> None:
        super().__init__(message, status_code=status_code)


def reports_visible(*, study: Study, user: Any) -> QuerySet[Report]:
    """The study's versions `user` may read, oldest first: all of them for a radiologist (the
    drafts are their working copies), only the signed ones for anyone else."""
    reports = study.reports.select_related("author", "signed_by", "taken_over_from").order_by("version")
    return reports if can(user, Capability.REVIEW) else reports.filter(state=Report.State.SIGNED)


@dataclasses.dataclass(frozen=True)
class ReportDesk:
    """What a report page shows `user`: the versions they may read, the draft (if they may see
    it), whether they may write, and if not, why (naming the holder or the author)."""

    reports: list[Report]
    draft: Report | None
    may_write: bool
    why_not: str
    may_take_over: bool


def report_desk(*, study: Study, user: Any) -> ReportDesk:
    reports = list(reports_visible(study=study, user=user))
    draft = next((r for r in reports if not r.is_signed), None)
    if not can(user, Capability.REVIEW):
        return ReportDesk(reports, None, False, "Only radiologists write and sign reports.", False)
    why_not = ""
    if study.assigned_radiologist_id not in (None, user.pk):
        why_not = f"{holder_name(study)} holds this study: only they write its report."
    elif draft is not None and draft.author_id != user.pk:
        why_not = _whose(draft)
    return ReportDesk(reports, draft, not why_not, why_not, bool(why_not))


def _whose(draft: Report) -> str:
    author = draft.author.get_username()
    return f"Version {draft.version} is {author}'s draft: only its author edits and signs it."


def _not_yours(draft: Report) -> ReportError:
    return ReportError(f"{_whose(draft)} Take the study over to go on with it.", status_code=409)


@dataclass(frozen=True)
class CriticalCommunication:
    """A critical result in a draft and how it was communicated (all optional while drafting;
    signing needs who was told, how and when once there is a critical finding)."""

    finding: str = ""
    told_to: str = ""
    told_how: str = ""
    told_at: dt.datetime | None = None
    acknowledged: bool = False


def _critical_check(critical: CriticalCommunication) -> None:
    if critical.told_how and critical.told_how not in Report.ToldHow.values:
        raise ReportError(f"How it was told: one of {', '.join(Report.ToldHow.values)}.")
    if critical.told_at and critical.told_at > timezone.now() + dt.timedelta(minutes=5):
        raise ReportError("The communication cannot be dated in the future.")
    if len(critical.finding) > 2000 or len(critical.told_to) > 200:
        raise ReportError("The critical result or the name of who was told is too long.")
    if not critical.finding and (critical.told_to or critical.told_how or critical.told_at):
        raise ReportError("Say which critical result was communicated.")


def _template_fill(draft: Report, template: ReportTemplate, *, replace: bool) -> list[str]:
    """Put the template's text into the draft's empty fields (into every field the template has
    text for when `replace`: the radiologist confirmed it); the names of the fields filled."""
    filled = []
    for name, _heading in REPORT_SECTIONS:
        text = getattr(template, name)
        if text.strip() and (replace or not getattr(draft, name).strip()):
            setattr(draft, name, text)
            filled.append(name)
    draft.template_name = template.name
    return filled


def _template_offered(template_id: int) -> ReportTemplate:
    template = ReportTemplate.objects.filter(pk=template_id, active=True).first()
    if template is None:
        raise ReportError("No such report template, or it is no longer offered.")
    return template


def report_draft_save(
    *,
    study_id: int,
    author: Any,
    impression: str,
    clinical_information: str | None = None,
    findings: str | None = None,
    critical: CriticalCommunication | None = None,
    template_id: int | None = None,
    template_replace: bool = False,
    ip_address: str | None = None,
) -> Report:
    """Save `author`'s draft of the study: the one being edited, or a new version (an addendum
    once a version is signed). Refused (409) unless `author` holds the study (an unclaimed one
    is claimed for them) and any draft is theirs. A study waiting to be read goes into review.
    Its PDF is rendered by a worker after the commit. A field passed as None stays as it was.
    With `template_id`, that active template fills the fields left empty (every field it has
    text for when `template_replace`); its name is kept on the version and in the audit row."""
    with transaction.atomic():
        study = study_locked(study_id)
        study_hold_for_report(study=study, user=author, ip_address=ip_address)
        draft = study.reports.select_for_update().filter(state=Report.State.DRAFT).first()
        if draft is not None and draft.author_id != author.pk:
            raise _not_yours(draft)
        if draft is None:
            latest = study.reports.aggregate(n=Max("version"))["n"] or 0
            draft = Report(study=study, version=latest + 1, is_addendum=latest > 0, author=author)
        draft.impression = impression
        if clinical_information is not None:
            draft.clinical_information = clinical_information
        if findings is not None:
            draft.findings = findings
        filled = None
        if template_id is not None:
            template = _template_offered(template_id)
            filled = _template_fill(draft, template, replace=template_replace)
        for name, heading in REPORT_SECTIONS:
            if len(getattr(draft, name)) > MAX_IMPRESSION_CHARS:
                raise ReportError(f"{heading} is longer than {MAX_IMPRESSION_CHARS:,} characters.")
        if critical is not None:
            _critical_check(critical)
            draft.critical_finding = critical.finding.strip()
            draft.critical_told_to = critical.told_to.strip()
            draft.critical_told_how = critical.told_how
            draft.critical_told_at = critical.told_at
            draft.critical_acknowledged = critical.acknowledged and bool(critical.finding)
        draft.save()
        audit_record(
            actor=author,
            action="report.draft",
            patient=study.patient,
            study=study,
            obj=draft,
            ip_address=ip_address,
            detail={
                "version": draft.version,
                "addendum": draft.is_addendum,
                **({"critical": True, "told_to": draft.critical_told_to} if draft.critical_finding else {}),
                **(
                    {"template": draft.template_name, "template_filled": filled} if filled is not None else {}
                ),
            },
        )
        if study.status in AI_STATES:
            study_transition(
                study=study,
                to=Study.Status.IN_REVIEW,
                actor=author,
                reason="its holder began a report",
                ip_address=ip_address,
                event="in_review",
            )
        transaction.on_commit(lambda: report_render_request(report_id=draft.pk))
    return draft


def report_sign(*, report_id: int, signer: Any, ip_address: str | None = None) -> Report:
    """Sign a draft: only its author may (409 naming them otherwise, or naming the colleague
    who holds the study now). It can no longer change; the study moves to reported through the
    state machine, and every open worklist hears of it."""
    study_id = Report.objects.filter(pk=report_id).values_list("study_id", flat=True).first()
    if study_id is None:
        raise ReportError("No such report.", status_code=404)
    with transaction.atomic():
        study = study_locked(study_id)  # the study first, then the report: as drafting does
        report = Report.objects.select_for_update().select_related("author").get(pk=report_id)
        if report.is_signed:
            raise ReportError(
                f"Version {report.version} is already signed and cannot change; write an addendum.",
                status_code=409,
            )
        if report.author_id != signer.pk:
            raise _not_yours(report)
        if study.assigned_radiologist_id not in (None, signer.pk):
            raise ReportError(
                f"{holder_name(study)} holds this study now: only they sign its report.", status_code=409
            )
        if not report.impression.strip():
            raise ReportError("The impression is empty: write it before signing.")
        if report.critical_finding and not (
            report.critical_told_to and report.critical_told_how and report.critical_told_at
        ):
            raise ReportError(
                "This report has a critical result: record who was told, how and when before signing."
            )
        report.state = Report.State.SIGNED
        report.signed_by = signer
        report.signed_at = timezone.now()
        report.save()
        audit_record(
            actor=signer,
            action="report.sign",
            patient=study.patient,
            study=study,
            obj=report,
            ip_address=ip_address,
            detail={"version": report.version, "addendum": report.is_addendum},
        )
        moved = study_transition(
            study=study, to=Study.Status.REPORTED, actor=signer, ip_address=ip_address, event="signed"
        )
        if not moved:  # an addendum: the study was reported already, its report changed
            study_event_publish(study=study, event="signed")
        transaction.on_commit(lambda: report_render_request(report_id=report.pk))
    return report


def report_render_request(*, report_id: int) -> None:
    """Ask a worker to render the PDF. If the broker is down the PDF is rendered when it is
    first downloaded instead: nothing waits on this."""
    from django.conf import settings

    try:
        job_send(TASK_RENDER_REPORT, args=[report_id], queue=settings.QUEUE_REPORTS)
    except Exception:  # noqa: BLE001 - any broker failure: rendered on download instead
        log.warning("Could not send report %s to be rendered", report_id, exc_info=True)


def report_text_hash(report: Report) -> str:
    """What the PDF must show: its text, state, signer and time (a signed PDF shows them). The
    clinical information and findings count only once either has text, so a version without
    them keeps the hash its PDF was rendered under (a signed PDF is never rendered again)."""
    critical = [
        report.critical_finding,
        report.critical_told_to,
        report.critical_told_how,
        str(report.critical_told_at or ""),
        str(report.critical_acknowledged),
    ]
    key = "|".join(
        [
            report.impression,
            report.state,
            str(report.signed_by_id or ""),
            str(report.signed_at or ""),
            *critical,
        ]
    )
    if report.clinical_information or report.findings:
        key += "|" + "|".join([report.clinical_information, report.findings])
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
    # The PDF is written before the row that points at it and not deleted if something fails
    # after: the row may have committed. One no row points at is removed later
    # (files.media_remove_orphan_files).
    with transaction.atomic():
        locked = Report.objects.select_for_update().get(pk=report_id)
        if report_text_hash(locked) != wanted or report_pdf_is_current(locked):
            return locked  # edited (or rendered) meanwhile: the newer render wins
        old = locked.pdf.name if locked.pdf else ""
        name = f"v{locked.version}-{wanted[:12]}.pdf"
        locked.pdf.save(name, ContentFile(data), save=False)
        locked.pdf_sha256 = hashlib.sha256(data).hexdigest()
        locked.rendered_text_hash = wanted
        locked.render_error = ""
        locked.save(update_fields=["pdf", "pdf_sha256", "rendered_text_hash", "render_error", "updated_at"])
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
