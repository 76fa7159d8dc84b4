"""The pages: short views over selectors; live updates come from static JS over websockets."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from core.conditions import KNOWN_BODY_PARTS
from web.access import Capability, can, requires
from web.clinical import selectors
from web.clinical.models import Batch, Study
from web.clinical.services import audit_record
from web.clinical.services.batches import batch_progress, batch_summary


@login_required
def worklist(request: HttpRequest) -> HttpResponse:
    batch = request.GET.get("batch", "")
    studies = selectors.study_worklist(batch_id=int(batch) if batch.isdigit() else None)[:200]
    return render(
        request,
        "ui/worklist.html",
        {"studies": studies, "body_parts": KNOWN_BODY_PARTS, "batch": batch if batch.isdigit() else ""},
    )


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
def batches_page(request: HttpRequest) -> HttpResponse:
    """The latest batches, and (for those who may upload) a form for a new one."""
    batches = Batch.objects.select_related("created_by")[:100]
    return render(
        request,
        "ui/batches.html",
        {"batches": batches, "can_upload": can(request.user, Capability.UPLOAD)},
    )


@requires(Capability.VIEW_STUDIES)
def batch_page(request: HttpRequest, batch_id: int) -> HttpResponse:
    """One batch: live progress over /ws/batches/<id>/, then its summary."""
    batch = get_object_or_404(Batch, pk=batch_id)
    return render(
        request,
        "ui/batch.html",
        {"batch": batch, "summary": batch_summary(batch), "progress": batch_progress(batch)},
    )
