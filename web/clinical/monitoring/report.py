"""What the monitoring page, the API and the weekly summary (CSV, PDF) show: one function each,
over monitoring.summary (the window) and monitoring.weekly (the weeks)."""

from __future__ import annotations

import csv
import datetime as dt
import io
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.safestring import SafeString

from core.conditions import CONDITIONS
from web.clinical.monitoring.alerts import monitoring_check, open_alerts
from web.clinical.monitoring.charts import histogram_chart, rate_chart
from web.clinical.monitoring.summary import ModelMonitoring, monitoring_models
from web.clinical.monitoring.weekly import Week, monitoring_weeks

MAX_DAYS = 3660
MAX_WEEKS = 104
DEFAULT_WEEKS = 12


class MonitoringRequestInvalid(ValueError):
    """A window the monitoring cannot answer for (str(): what is wrong)."""


def window_days_parse(raw: str | None, *, default: int | None = None) -> int:
    default = default or settings.RADTRIAGE_MONITORING_WINDOW_DAYS
    if raw in (None, ""):
        return default
    if not str(raw).isdigit() or not 1 <= int(str(raw)) <= MAX_DAYS:
        raise MonitoringRequestInvalid(f"days must be a whole number from 1 to {MAX_DAYS}.")
    return int(str(raw))


def weeks_parse(raw: str | None) -> int:
    if raw in (None, ""):
        return DEFAULT_WEEKS
    if not str(raw).isdigit() or not 1 <= int(str(raw)) <= MAX_WEEKS:
        raise MonitoringRequestInvalid(f"weeks must be a whole number from 1 to {MAX_WEEKS}.")
    return int(str(raw))


def monitoring_window(*, days: int, now: dt.datetime | None = None) -> list[ModelMonitoring]:
    """The window's models; when it is the alerts' window, the alerts are brought in line too."""
    models = monitoring_models(days=days, now=now)
    if days == settings.RADTRIAGE_MONITORING_WINDOW_DAYS:
        monitoring_check(now=now, models=models)
    return models


def monitoring_api(*, days: int, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """One object per model with results in the window (ModelMonitoring.as_dict)."""
    return [{"days": days, **m.as_dict()} for m in monitoring_window(days=days, now=now)]


@dataclass
class ModelPanel:
    """One model on the page: its numbers and its four pictures."""

    model: ModelMonitoring
    condition_label: str
    weeks: list[Week]
    charts: list[SafeString] = field(default_factory=list)


def monitoring_page(*, days: int, weeks: int, now: dt.datetime | None = None) -> dict[str, Any]:
    """The page's context: every model's panel, and the open alerts."""
    now = now or timezone.now()
    models = monitoring_window(days=days, now=now)
    series = monitoring_weeks(models=models, weeks=weeks, now=now)
    panels = []
    for index, model in enumerate(models):
        panel = ModelPanel(
            model=model,
            condition_label=CONDITIONS[model.condition].label
            if model.condition in CONDITIONS
            else model.condition,
            weeks=series[(model.model_id, model.model_sha256, model.condition)],
        )
        labels = [f"{w.start:%d %b}" for w in panel.weeks]
        panel.charts = [
            rate_chart(
                title="Flag rate (band: expected)",
                labels=labels,
                values=[w.flag_rate for w in panel.weeks],
                bands=[w.band for w in panel.weeks],
                chart_id=f"chart-{index}-flag-rate",
            ),
            rate_chart(
                title="Agreement on flags",
                labels=labels,
                values=[w.agreement for w in panel.weeks],
                chart_id=f"chart-{index}-agreement",
            ),
            rate_chart(
                title="Not applicable",
                labels=labels,
                values=[w.not_applicable_rate for w in panel.weeks],
                chart_id=f"chart-{index}-not-applicable",
            ),
        ]
        if model.histogram:
            panel.charts.append(
                histogram_chart(
                    title=f"Scores, last {days} days, by reference decile",
                    counts=model.histogram,
                    reference=model.reference.fractions,
                    chart_id=f"chart-{index}-scores",
                )
            )
        panels.append(panel)
    return {
        "days": days,
        "weeks": weeks,
        "now": now,
        "panels": panels,
        "alerts": open_alerts(),
        "psi_alert": settings.RADTRIAGE_MONITORING_PSI_ALERT,
        "psi_moderate": settings.RADTRIAGE_MONITORING_PSI_MODERATE,
        "min_results": settings.RADTRIAGE_MONITORING_MIN_RESULTS,
        "confidence": settings.RADTRIAGE_MONITORING_BAND_CONFIDENCE,
    }


CSV_COLUMNS = (
    "model_id",
    "model_sha256",
    "condition",
    "week_start",
    "analysed",
    "findings",
    "negatives",
    "not_applicable",
    "experimental",
    "placeholder",
    "scored",
    "flagged",
    "flag_rate",
    "expected_low",
    "expected_high",
    "agree",
    "disagree",
    "uncertain",
    "agreement",
    "not_applicable_rate",
    "reference",
)


def _rate(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def monitoring_weekly_rows(*, weeks: int, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """The weekly summary: one row per model and week (CSV_COLUMNS)."""
    now = now or timezone.now()
    models = monitoring_models(days=weeks * 7, now=now)
    series = monitoring_weeks(models=models, weeks=weeks, now=now)
    rows = []
    for model in models:
        for week in series[(model.model_id, model.model_sha256, model.condition)]:
            rows.append(
                {
                    "model_id": model.model_id,
                    "model_sha256": model.model_sha256,
                    "condition": model.condition,
                    "week_start": week.start.isoformat(),
                    "analysed": week.analysed,
                    "findings": week.counts.get("finding", 0),
                    "negatives": week.counts.get("negative", 0),
                    "not_applicable": week.counts.get("not_applicable", 0),
                    "experimental": week.counts.get("experimental", 0),
                    "placeholder": week.counts.get("placeholder", 0),
                    "scored": week.scored,
                    "flagged": week.flagged,
                    "flag_rate": _rate(week.flag_rate),
                    "expected_low": _rate(week.band[0] if week.band else None),
                    "expected_high": _rate(week.band[1] if week.band else None),
                    "agree": week.verdicts.get("agree", 0),
                    "disagree": week.verdicts.get("disagree", 0),
                    "uncertain": week.verdicts.get("uncertain", 0),
                    "agreement": _rate(week.agreement),
                    "not_applicable_rate": _rate(week.not_applicable_rate),
                    "reference": model.reference.label,
                }
            )
    return rows


def monitoring_weekly_csv(*, weeks: int, now: dt.datetime | None = None) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(monitoring_weekly_rows(weeks=weeks, now=now))
    return out.getvalue()


def monitoring_weekly_pdf(*, weeks: int, now: dt.datetime | None = None) -> bytes:
    from web.clinical.reporting.pdf import html_pdf_bytes

    context = monitoring_page(days=weeks * 7, weeks=weeks, now=now)
    context["institution"] = settings.RADTRIAGE_INSTITUTION_NAME
    return html_pdf_bytes(render_to_string("clinical/monitoring_pdf.html", context))
