"""The pages: short views over selectors; live updates come from static JS over websockets."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from core.conditions import KNOWN_BODY_PARTS
from web.access import Capability, requires
from web.clinical import selectors
from web.clinical.models import Analysis, Study
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


@requires(Capability.VIEW_STUDIES)
def analysis_card(request: HttpRequest, analysis_id: int) -> HttpResponse:
    """One result's card, the same partial the study page is drawn with: the page fetches it
    again when a live event says the result changed (one template draws every card)."""
    try:
        analysis = selectors.analysis_get(analysis_id=analysis_id)
    except Analysis.DoesNotExist:
        raise Http404("No such analysis.") from None
    return render(request, "ui/_analysis.html", {"a": analysis})
