"""The pages: short views over selectors; live updates come from static JS over websockets."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from core.conditions import KNOWN_BODY_PARTS
from web.clinical import selectors
from web.clinical.models import Study
from web.clinical.services import audit_record


@login_required
def worklist(request: HttpRequest) -> HttpResponse:
    studies = selectors.study_worklist()[:200]
    return render(request, "ui/worklist.html", {"studies": studies, "body_parts": KNOWN_BODY_PARTS})


@login_required
def study_page(request: HttpRequest, study_id: int) -> HttpResponse:
    try:
        study = selectors.study_detail(study_id=study_id)
    except Study.DoesNotExist:
        raise Http404("No such study.") from None
    audit_record(
        actor=request.user,
        action="study.view",
        patient=study.patient,
        study=study,
        obj=study,
        ip_address=request.META.get("REMOTE_ADDR") or None,
    )
    return render(request, "ui/study.html", {"study": study})


@login_required
def report_page(request: HttpRequest, study_id: int) -> HttpResponse:
    """Draft, sign and list a study's report versions (radiologists edit; others read)."""
    from web.access import Capability, can

    if not can(request.user, Capability.VIEW_STUDIES):
        raise PermissionDenied("Your account may not view studies.")
    try:
        study = Study.objects.select_related("patient").get(pk=study_id)
    except Study.DoesNotExist:
        raise Http404("No such study.") from None
    reports = list(study.reports.select_related("author", "signed_by").order_by("version"))
    draft = next((r for r in reports if not r.is_signed), None)
    context = {
        "study": study,
        "reports": reports,
        "draft": draft,
        "signed": any(r.is_signed for r in reports),
        "can_edit": can(request.user, Capability.REVIEW),
    }
    return render(request, "ui/report.html", context)
