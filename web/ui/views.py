"""The pages: short views over selectors; live updates come from static JS over websockets."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from core.conditions import CONDITIONS, KNOWN_BODY_PARTS, conditions_for_body_part
from web.access import Capability, can
from web.clinical import selectors
from web.clinical.models import Study
from web.clinical.selectors import WORKLIST_REGIONS, WorklistFilterError, WorklistFilters
from web.clinical.services import audit_record
from web.clinical.services.worklist import study_open

WORKLIST_PAGE_SIZE = 50


# Roles: the worklist needs Capability.VIEW_STUDIES once the existing pages are wired to
# web.access (another change); until then any logged-in account, as before.
@login_required
def worklist(request: HttpRequest) -> HttpResponse:
    """The worklist page; with ?fragment=1 only its results (rows and pager), which the live
    update fetches with the same query string, so the filters and the page stay as they were."""
    try:
        filters, filter_error = selectors.worklist_filters_parse(request.GET), ""
    except WorklistFilterError as exc:
        filters, filter_error = WorklistFilters(), str(exc)
    paginator = Paginator(selectors.study_worklist(filters=filters, user=request.user), WORKLIST_PAGE_SIZE)
    page = paginator.get_page(request.GET.get("page"))
    rows = list(page.object_list)
    selectors.worklist_strongest(rows)
    for study in rows:
        study.waiting = selectors.waiting_label(study)
        applies = conditions_for_body_part(study.body_part)
        study.analyse_choices = [(c, CONDITIONS[c].label, c in applies) for c in applies] + [
            (c.code, c.label, False) for c in CONDITIONS.values() if c.code not in applies
        ]
    query = request.GET.copy()
    for key in ("page", "fragment"):
        query.pop(key, None)
    context = {
        "studies": rows,
        "page": page,
        "query": query.urlencode(),
        "filters": filters,
        "filter_error": filter_error,
        "can_review": can(request.user, Capability.REVIEW),
        "statuses": Study.Status.choices,
        "conditions": [(c.code, c.label) for c in CONDITIONS.values()],
        "regions": list(WORKLIST_REGIONS),
        "body_parts": KNOWN_BODY_PARTS,
        "waiting_cap_hours": f"{settings.RADTRIAGE_WAITING_CAP_HOURS:g}",
    }
    if request.GET.get("fragment"):
        return render(request, "ui/_worklist_results.html", context)
    return render(request, "ui/worklist.html", context)


@login_required
def study_page(request: HttpRequest, study_id: int) -> HttpResponse:
    try:
        study = selectors.study_detail(study_id=study_id)
    except Study.DoesNotExist:
        raise Http404("No such study.") from None
    moved = study_open(study=study, user=request.user)
    audit_record(
        actor=request.user,
        action="study.view",
        patient=study.patient,
        study=study,
        obj=study,
        ip_address=request.META.get("REMOTE_ADDR") or None,
        detail={"status": Study.Status.IN_REVIEW.value} if moved else None,
    )
    return render(
        request, "ui/study.html", {"study": study, "can_review": can(request.user, Capability.REVIEW)}
    )
