"""The monitoring page and its weekly summary downloads (admins: Capability.MANAGE)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from web.access import Capability, requires
from web.clinical.monitoring.report import (
    MonitoringRequestInvalid,
    monitoring_page,
    monitoring_weekly_csv,
    monitoring_weekly_pdf,
    weeks_parse,
    window_days_parse,
)


@requires(Capability.MANAGE)
def monitoring(request: HttpRequest) -> HttpResponse:
    """Each model's weeks as pictures (flag rate and its band, agreement, not-applicable rate,
    scores against the reference) and its numbers for the window."""
    try:
        days = window_days_parse(request.GET.get("days"))
        weeks = weeks_parse(request.GET.get("weeks"))
    except MonitoringRequestInvalid as exc:
        return render(request, "ui/monitoring.html", {"error": str(exc)}, status=400)
    return render(request, "ui/monitoring.html", monitoring_page(days=days, weeks=weeks))


def _download(content: bytes | str, content_type: str, suffix: str) -> HttpResponse:
    response = HttpResponse(content, content_type=content_type)
    name = f"radtriage-monitoring-{timezone.localdate():%Y-%m-%d}.{suffix}"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


@requires(Capability.MANAGE)
def monitoring_csv(request: HttpRequest) -> HttpResponse:
    try:
        weeks = weeks_parse(request.GET.get("weeks"))
    except MonitoringRequestInvalid as exc:
        return HttpResponse(str(exc), status=400, content_type="text/plain")
    return _download(monitoring_weekly_csv(weeks=weeks), "text/csv; charset=utf-8", "csv")


@requires(Capability.MANAGE)
def monitoring_pdf(request: HttpRequest) -> HttpResponse:
    try:
        weeks = weeks_parse(request.GET.get("weeks"))
    except MonitoringRequestInvalid as exc:
        return HttpResponse(str(exc), status=400, content_type="text/plain")
    return _download(monitoring_weekly_pdf(weeks=weeks), "application/pdf", "pdf")
