"""The pages: short views over selectors; live updates come from static JS over websockets."""

from __future__ import annotations

from django.contrib.staticfiles import finders
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import cache_control

from core.conditions import KNOWN_BODY_PARTS
from web.access import Capability, can, requires
from web.clinical import selectors
from web.clinical.models import Study
from web.clinical.services import audit_record_read


@requires(Capability.VIEW_STUDIES)
def worklist(request: HttpRequest) -> HttpResponse:
    studies = selectors.study_worklist()[:200]
    return render(request, "ui/worklist.html", {"studies": studies, "body_parts": KNOWN_BODY_PARTS})


@requires(Capability.VIEW_STUDIES)
def study_page(request: HttpRequest, study_id: int) -> HttpResponse:
    try:
        study = selectors.study_detail(study_id=study_id)
    except Study.DoesNotExist:
        raise Http404("No such study.") from None
    audit_record_read(
        actor=request.user,
        action="study.view",
        patient=study.patient,
        study=study,
        obj=study,
        ip_address=request.META.get("REMOTE_ADDR") or None,
    )
    return render(request, "ui/study.html", {"study": study})


@requires(Capability.VIEW_STUDIES)
def report_page(request: HttpRequest, study_id: int) -> HttpResponse:
    """Draft, sign and list a study's report versions (radiologists edit; others read)."""
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


@cache_control(public=True, max_age=86400)
def favicon(request: HttpRequest) -> HttpResponse:
    """/favicon.ico, which browsers ask for whatever the page links: the app's SVG icon."""
    path = finders.find("ui/favicon.svg")
    if path is None:
        raise Http404("No favicon.")
    with open(path, "rb") as handle:
        return HttpResponse(handle.read(), content_type="image/svg+xml")
