"""The pages: short views over selectors; live updates come from static JS over websockets."""

from __future__ import annotations

from django.conf import settings
from django.contrib.staticfiles import finders
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.cache import cache_control

from core.conditions import CONDITIONS, KNOWN_BODY_PARTS, conditions_for_body_part
from web.access import Capability, can, client_ip, requires
from web.clinical.audit.reads import Read, analysis_read, reader_of, studies_read, study_read
from web.clinical.batches.batches import batch_progress
from web.clinical.batches.summary import batch_summary
from web.clinical.models import Analysis, Batch, Report, ReportTemplate, Study
from web.clinical.registry.cards import ModelUnknown, model_card_figure, model_card_read
from web.clinical.reporting.pdf import report_ai_text
from web.clinical.reporting.report_templates import report_templates_offered, study_template_region
from web.clinical.reporting.reports import REPORT_SECTIONS, report_desk, report_sections, reports_visible
from web.clinical.worklist.claims import study_open
from web.clinical.worklist.queries import (
    WORKLIST_REGIONS,
    WorklistFilterError,
    WorklistFilters,
    age_label,
    waiting_label,
    worklist_filters_parse,
    worklist_neighbours,
    worklist_rows,
    worklist_strongest,
)

WORKLIST_PAGE_SIZE = 50


@requires(Capability.VIEW_STUDIES)
def worklist(request: HttpRequest) -> HttpResponse:
    """The worklist page; with ?fragment=1 only its results (rows and pager), which the live
    update fetches with the same query string, so the filters and the page stay as they were."""
    try:
        filters, filter_error = worklist_filters_parse(request.GET), ""
    except WorklistFilterError as exc:
        filters, filter_error = WorklistFilters(), str(exc)
    asked = str(request.GET.get("page") or "1")
    first_row = (int(asked) - 1) * WORKLIST_PAGE_SIZE if asked.isdigit() and int(asked) > 0 else 0
    studies = worklist_rows(filters=filters, user=request.user, count_from=min(first_row, 2**31 - 1))
    paginator: Paginator[Study] = Paginator(studies, WORKLIST_PAGE_SIZE)  # type: ignore[arg-type]
    page = paginator.get_page(request.GET.get("page"))
    rows = list(page.object_list)
    studies_read(rows=rows, reader=reader_of(request))  # the rows this person sees
    worklist_strongest(rows)
    for study in rows:
        study.waiting = waiting_label(study)
        study.age = age_label(study.patient.birth_date, study.study_date)
        applies = conditions_for_body_part(study.body_part)
        study.analyse_choices = [(c, CONDITIONS[c].label, c in applies) for c in applies] + [
            (c.code, c.label, False) for c in CONDITIONS.values() if c.code not in applies
        ]
    query = request.GET.copy()
    for key in ("page", "fragment"):
        query.pop(key, None)
    unsorted = query.copy()
    unsorted.pop("sort", None)
    context = {
        "sort": filters.sort,
        "columns": WORKLIST_COLUMNS,
        "studies": rows,
        "page": page,
        "count_capped": studies.count_capped,  # "more than <count_floor> studies"
        "count_floor": f"{paginator.count - 1:,}",
        "query": query.urlencode(),
        "query_unsorted": unsorted.urlencode(),
        "filters": filters,
        "filter_error": filter_error,
        "can_review": can(request.user, Capability.REVIEW),
        "statuses": Study.Status.choices,
        "conditions": [(c.code, c.label) for c in CONDITIONS.values()],
        "regions": list(WORKLIST_REGIONS),
        "body_parts": KNOWN_BODY_PARTS,
        "waiting_cap_hours": f"{settings.RADTRIAGE_WAITING_CAP_HOURS:g}",
        "batch": filters.batch,
    }
    if request.GET.get("fragment"):
        return render(request, "ui/_worklist_results.html", context)
    return render(request, "ui/worklist.html", context)


# The worklist's header: (label, sort key or "" for a column that does not sort).
WORKLIST_COLUMNS = [
    ("Priority", "priority"),
    ("Patient", "patient"),
    ("Age", "age"),
    ("Sex", "sex"),
    ("Modality", "modality"),
    ("Accession", "accession"),
    ("Body region", "region"),
    ("Study date", "date"),
    ("Status", "status"),
    ("Strongest AI result", ""),
    ("Assigned", ""),
    ("Waiting", "waiting"),
    ("Jobs", ""),
    ("", ""),
]


@requires(Capability.VIEW_STUDIES)
def study_page(request: HttpRequest, study_id: int) -> HttpResponse:
    try:
        study = study_read(study_id=study_id, reader=reader_of(request), full=True)
    except Study.DoesNotExist:
        raise Http404("No such study.") from None
    study_open(study=study, user=request.user, ip_address=client_ip(request))  # audits a move
    previous, following = worklist_neighbours(study_id=study.pk, user=request.user)
    context = {
        "study": study,
        "can_review": can(request.user, Capability.REVIEW),
        "conditions": [(c.code, c.label) for c in CONDITIONS.values()],
        # The latest version this person may read that states a critical result.
        "critical": next(
            (
                r
                for r in reversed(list(reports_visible(study=study, user=request.user)))
                if r.critical_finding
            ),
            None,
        ),
        "previous_study": previous,
        "next_study": following,
    }
    return render(request, "ui/study.html", context)


@requires(Capability.VIEW_STUDIES)
def report_page(request: HttpRequest, study_id: int) -> HttpResponse:
    """Draft, sign and list a study's report versions: the holder writes; other radiologists
    read the draft and may take the study over; anyone else sees the signed versions only."""
    try:
        study = study_read(study_id=study_id, reader=reader_of(request), action=Read.REPORTS)
    except Study.DoesNotExist:
        raise Http404("No such study.") from None
    desk = report_desk(study=study, user=request.user)
    for report in desk.reports:
        report.sections = report_sections(report)  # type: ignore[attr-defined]
    context = {
        "study": study,
        "reports": desk.reports,
        "draft": desk.draft,
        "signed": any(r.is_signed for r in desk.reports),
        "can_edit": desk.may_write,
        "why_not": desk.why_not,
        "may_take_over": desk.may_take_over,
        "ai_text": report_ai_text(study),
        "told_how": Report.ToldHow.choices,
        "templates": _template_choices(study) if desk.may_write else [],
    }
    return render(request, "ui/report.html", context)


def _template_choices(study: Study) -> list[tuple[str, list[ReportTemplate]]]:
    """The template picker's groups: this body region's templates, then the others; each
    template says which of the report's fields it has text for (`fills`)."""
    region = study_template_region(study)
    groups: dict[str, list[ReportTemplate]] = {}
    for template in report_templates_offered(study=study):
        template.fills = " ".join(n for n, _h in REPORT_SECTIONS if getattr(template, n).strip())  # type: ignore[attr-defined]
        mine = bool(region) and template.region == region
        groups.setdefault("For this body region" if mine else "Other templates", []).append(template)
    return list(groups.items())


@cache_control(public=True, max_age=86400)
def favicon(request: HttpRequest) -> HttpResponse:
    """/favicon.ico, which browsers ask for whatever the page links: the app's SVG icon."""
    path = finders.find("ui/favicon.svg")
    if path is None:
        raise Http404("No favicon.")
    with open(path, "rb") as handle:
        return HttpResponse(handle.read(), content_type="image/svg+xml")


@requires(Capability.VIEW_STUDIES)
def analysis_card(request: HttpRequest, analysis_id: int) -> HttpResponse:
    """One result's card, the same partial the study page is drawn with: the page fetches it
    again when a live event says the result changed (one template draws every card)."""
    try:
        analysis = analysis_read(analysis_id=analysis_id, reader=reader_of(request), action=Read.ANALYSIS)
    except Analysis.DoesNotExist:
        raise Http404("No such analysis.") from None
    return render(request, "ui/_analysis.html", {"a": analysis})


@requires(Capability.VIEW_STUDIES)
def model_card_page(request: HttpRequest, model_id: str) -> HttpResponse:
    """A model's card rendered, with its figures; a clear 404 page for an unknown model."""
    try:
        card = model_card_read(model_id=model_id)
    except ModelUnknown as exc:
        return render(request, "ui/model_card.html", {"unknown": str(exc), "model_id": model_id}, status=404)
    return render(request, "ui/model_card.html", {"card": card, "model_id": model_id})


@requires(Capability.VIEW_STUDIES)
@cache_control(private=True, max_age=3600)
def model_card_figure_file(request: HttpRequest, model_id: str, name: str) -> FileResponse:
    """One figure beside a model's card (a plain .png name in that model's folder only)."""
    try:
        path = model_card_figure(model_id=model_id, name=name)
    except (ModelUnknown, FileNotFoundError):
        raise Http404("No such figure.") from None
    return FileResponse(path.open("rb"), content_type="image/png")


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
