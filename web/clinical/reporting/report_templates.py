"""Report templates: which ones a radiologist is offered for a study (those of its body region
first), and the admins' edits (who and when, audited). Applying one to a draft belongs to the
report's lifecycle (web.clinical.reporting.reports.report_draft_save)."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from core.applicability import region_of_body_part
from web.clinical.audit.records import audit_record
from web.clinical.models import ReportTemplate, Study


def study_template_region(study: Study | None) -> str:
    """The template region of a study's body part ('chest', 'knee', 'limb'), '' if none."""
    return region_of_body_part(study.body_part) if study is not None and study.body_part else ""


def report_templates_offered(*, study: Study | None = None) -> list[ReportTemplate]:
    """The active templates, those for the study's region first, then those for any region,
    then the rest, each group by name."""
    region = study_template_region(study)

    def rank(template: ReportTemplate) -> tuple[int, str]:
        group = 0 if region and template.region == region else 1 if not template.region else 2
        return group, template.name.lower()

    return sorted(ReportTemplate.objects.filter(active=True), key=rank)


def _detail(template: ReportTemplate) -> dict[str, Any]:
    return {"name": template.name, "region": template.region, "active": template.active}


def report_template_save(*, template: ReportTemplate, actor: Any, ip_address: str | None = None) -> None:
    """Save an admin's new or edited template, naming them as its last editor (audited)."""
    with transaction.atomic():
        created = template.pk is None
        template.updated_by = actor
        template.save()
        audit_record(
            actor=actor,
            action="report_template.add" if created else "report_template.change",
            obj=template,
            ip_address=ip_address,
            detail=_detail(template),
        )


def report_template_delete(*, template: ReportTemplate, actor: Any, ip_address: str | None = None) -> None:
    """Delete a template (audited). Reports keep the name of the template they were written from."""
    with transaction.atomic():
        detail = _detail(template)
        audit_record(
            actor=actor, action="report_template.delete", obj=template, ip_address=ip_address, detail=detail
        )
        template.delete()
