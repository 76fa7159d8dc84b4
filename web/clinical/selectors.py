"""Selectors: read-only queries the views, API and consumers share."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db.models import (
    Case,
    Count,
    DateTimeField,
    Exists,
    F,
    IntegerField,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Coalesce
from django.utils import timezone

from core.conditions import (
    CHEST_PARTS,
    CONDITION_URGENCY,
    CONDITIONS,
    KNEE_PARTS,
    LIMB_PARTS,
    OTHER_BODY_PARTS,
)
from web.clinical.models import Analysis, AuditEvent, BatchItem, Image, Study


def _analysis_count(**filters: Any) -> Coalesce:
    """Per study, computed only for the rows on the page (PostgreSQL evaluates a subquery in
    the select list after the sort and the limit)."""
    counted = (
        Analysis.objects.filter(image__study=OuterRef("pk"), **filters)
        .order_by()
        .values("image__study")
        .annotate(n=Count("pk"))
        .values("n")[:1]
    )
    return Coalesce(Subquery(counted), 0)


@dataclass(frozen=True)
class WorklistFilters:
    """What the worklist shows: every field optional; the page and the API parse the same
    query string with `worklist_filters_parse`."""

    status: str = ""
    condition: str = ""
    positive_only: bool = False
    region: str = ""
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    assigned: str = ""  # "", "mine" or "unassigned"
    q: str = ""
    batch: int | None = None  # only the studies of this batch's files


# Body regions the worklist filters by (DICOM BodyPartExamined values of each).
WORKLIST_REGIONS: dict[str, frozenset[str]] = {
    "chest": CHEST_PARTS,
    "limb": LIMB_PARTS | KNEE_PARTS,
    "other": OTHER_BODY_PARTS,
}
ASSIGNED_CHOICES = ("mine", "unassigned")


class WorklistFilterError(ValueError):
    """A filter value the worklist does not know; `field` and `str()` say which and why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def worklist_filters_parse(params: Mapping[str, Any]) -> WorklistFilters:
    """A query string -> WorklistFilters. Raises WorklistFilterError on a value it cannot use."""

    def text(name: str) -> str:
        return str(params.get(name) or "").strip()

    def date(name: str) -> dt.date | None:
        value = text(name)
        if not value:
            return None
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            raise WorklistFilterError(name, f"{name}: use a date as YYYY-MM-DD.") from None

    status, condition, region, assigned = text("status"), text("condition"), text("region"), text("assigned")
    if status and status not in Study.Status.values:
        raise WorklistFilterError("status", f"Unknown status; use one of {', '.join(Study.Status.values)}.")
    if condition and condition not in CONDITIONS:
        raise WorklistFilterError("condition", f"Unknown condition; use one of {', '.join(CONDITIONS)}.")
    if region and region not in WORKLIST_REGIONS:
        raise WorklistFilterError("region", f"Unknown body region; use one of {', '.join(WORKLIST_REGIONS)}.")
    if assigned and assigned not in ASSIGNED_CHOICES:
        raise WorklistFilterError("assigned", "Use assigned=mine or assigned=unassigned.")
    batch = text("batch")
    if batch and not batch.isdigit():
        raise WorklistFilterError("batch", "A batch id (a number).")
    return WorklistFilters(
        status=status,
        condition=condition,
        positive_only=text("positive") in ("1", "true", "on", "yes"),
        region=region,
        date_from=date("date_from"),
        date_to=date("date_to"),
        assigned=assigned,
        q=text("q")[:100],
        batch=int(batch) if batch else None,
    )


def _urgency_of_condition() -> Case:
    return Case(
        *[When(Q(condition=code), then=Value(level)) for code, level in CONDITION_URGENCY.items()],
        default=Value(0),
        output_field=IntegerField(),
    )


def _real_findings() -> QuerySet[Analysis]:
    """Analysis.is_finding as a query (a not-applicable result is stored with positive=None)."""
    return Analysis.objects.filter(
        state=Analysis.State.SUCCEEDED, positive=True, is_placeholder=False, experimental=False
    ).exclude(applicable=False)


def study_worklist(
    *, status: str | None = None, filters: WorklistFilters | None = None, user: Any = None
) -> QuerySet[Study]:
    """Studies in triage order:

    1. the priority a person gave (STAT, urgent, routine); the AI never changes it;
    2. within a priority, a study waiting longer than RADTRIAGE_WAITING_CAP_HOURS first
       (longest waiting first), so AI-negative studies never starve;
    3. then studies with a real AI finding, by the urgency of the condition
       (core.conditions.CONDITION_URGENCY), then by its probability;
    4. then the longest waiting first.

    A reported study no longer waits. `strongest_id` is the analysis the row shows: the most
    urgent real finding, else the most probable finished result.
    """
    filters = filters or WorklistFilters(status=status or "")
    now = timezone.now()
    cap = now - dt.timedelta(hours=settings.RADTRIAGE_WAITING_CAP_HOURS)
    images = (
        Image.objects.filter(study=OuterRef("pk"))
        .order_by()
        .values("study")
        .annotate(n=Count("pk"))
        .values("n")[:1]
    )
    finding = _real_findings().filter(image__study=OuterRef("pk")).annotate(urgency=_urgency_of_condition())
    top_finding = finding.order_by("-urgency", "-probability")
    strongest = (
        Analysis.objects.filter(image__study=OuterRef("pk"), state=Analysis.State.SUCCEEDED)
        .annotate(
            urgency=_urgency_of_condition(),
            real=Exists(_real_findings().filter(pk=OuterRef("pk"))),
        )
        .order_by("-real", "-urgency", F("probability").desc(nulls_last=True), "-id")
        .values("pk")[:1]
    )
    open_statuses = [s for s in Study.Status.values if s != Study.Status.REPORTED]
    qs = (
        Study.objects.select_related("patient", "assigned_radiologist")
        .annotate(
            image_count=Coalesce(Subquery(images), 0),
            pending_count=_analysis_count(state__in=[Analysis.State.QUEUED, Analysis.State.RUNNING]),
            failed_count=_analysis_count(state=Analysis.State.FAILED),
            finding_urgency=Coalesce(Subquery(top_finding.values("urgency")[:1]), 0),
            finding_probability=Coalesce(Subquery(top_finding.values("probability")[:1]), 0.0),
            overdue_since=Case(
                When(created_at__lte=cap, status__in=open_statuses, then=F("created_at")),
                default=None,
                output_field=DateTimeField(),
            ),
            strongest_id=Subquery(strongest),
        )
        .order_by(
            "priority",
            F("overdue_since").asc(nulls_last=True),
            "-finding_urgency",
            "-finding_probability",
            "created_at",
            "id",
        )
    )
    return _filtered(qs, filters, user=user)


def _filtered(qs: QuerySet[Study], f: WorklistFilters, *, user: Any) -> QuerySet[Study]:
    if f.status:
        qs = qs.filter(status=f.status)
    if f.condition:
        qs = qs.filter(Exists(Analysis.objects.filter(image__study=OuterRef("pk"), condition=f.condition)))
    if f.positive_only:
        qs = qs.filter(ai_flagged=True)
    if f.region:
        qs = qs.filter(body_part__in=sorted(WORKLIST_REGIONS[f.region]))
    if f.date_from:
        qs = qs.filter(study_date__gte=f.date_from)
    if f.date_to:
        qs = qs.filter(study_date__lte=f.date_to)
    if f.assigned == "mine":
        qs = qs.filter(assigned_radiologist=user) if user is not None else qs.none()
    elif f.assigned == "unassigned":
        qs = qs.filter(assigned_radiologist__isnull=True)
    if f.q:
        qs = qs.filter(
            Q(patient__name__icontains=f.q)
            | Q(patient__patient_id__icontains=f.q)
            | Q(accession_number__icontains=f.q)
            # DICOM names are stored 'Family^Given': "Jane Doe" should find 'Doe^Jane' too.
            | Q(patient__name__icontains="^".join(reversed(f.q.split())))
        )
    if f.batch is not None:
        files = BatchItem.objects.filter(batch_id=f.batch, image__isnull=False)
        qs = qs.filter(pk__in=files.values("image__study_id"))
    return qs


def worklist_strongest(studies: list[Study]) -> None:
    """Attach `strongest` (the Analysis the row shows, or None) to each study of a page:
    one query for the page."""
    ids = [getattr(s, "strongest_id", None) for s in studies]
    by_id = {a.pk: a for a in Analysis.objects.filter(pk__in=[i for i in ids if i])}
    for study, strongest_id in zip(studies, ids, strict=True):
        study.strongest = by_id.get(strongest_id) if strongest_id else None  # type: ignore[attr-defined]


def waiting_label(study: Study, *, now: dt.datetime | None = None) -> str:
    """'3 h 12 min' since the study arrived; '—' once reported."""
    if study.status == Study.Status.REPORTED:
        return "—"
    minutes = max(0, int(((now or timezone.now()) - study.created_at).total_seconds() // 60))
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} d {hours % 24} h"


def study_detail(*, study_id: int) -> Study:
    """One study with its images and their analyses, newest analysis last. Raises DoesNotExist."""
    return (
        Study.objects.select_related("patient", "assigned_radiologist")
        .prefetch_related(
            Prefetch(
                "images",
                queryset=Image.objects.order_by("created_at", "id").prefetch_related(
                    Prefetch("analyses", queryset=Analysis.objects.order_by("created_at", "id")),
                    "annotations",
                ),
            )
        )
        .get(pk=study_id)
    )


def analysis_get(*, analysis_id: int) -> Analysis:
    return Analysis.objects.select_related("image__study__patient").get(pk=analysis_id)


OVERLAY_ALPHA = 0.4  # the heat map's default intensity over the X-ray


def analysis_heatmap_overlay_png(*, analysis: Analysis, alpha: float = OVERLAY_ALPHA) -> bytes:
    """The Grad-CAM map in JET colours over the X-ray at its full resolution.

    Drawn on request from the stored image and raw map (numpy/OpenCV, no TensorFlow): the
    worker does not spend a full-resolution PNG on every analysis, most of which nobody opens.
    """
    from core.imaging import load_xray
    from core.overlay import encode_png, render_overlay

    with analysis.image.file.open("rb") as handle:
        xray = load_xray(handle.read(), max_pixels=settings.RADTRIAGE_MAX_PIXELS)
    return encode_png(render_overlay(xray.pixels, _raw_heatmap(analysis), alpha=alpha))


def analysis_heatmap_color_png(*, analysis: Analysis) -> bytes:
    """The Grad-CAM map alone, in JET colours, for the page to lay over the X-ray at any
    intensity (CSS opacity gives exactly core.overlay's (1 - alpha) * X-ray + alpha * colour)."""
    from core.overlay import colorize_heatmap, encode_png

    return encode_png(colorize_heatmap(_raw_heatmap(analysis)))


def _raw_heatmap(analysis: Analysis) -> Any:
    """float32 (h, w) in [0, 1] from the stored 8-bit map."""
    import cv2
    import numpy as np

    with analysis.heatmap_raw.open("rb") as handle:
        raw = cv2.imdecode(np.frombuffer(handle.read(), np.uint8), cv2.IMREAD_GRAYSCALE)
    if raw is None:
        raise ValueError(f"The stored heat map of analysis {analysis.pk} is unreadable.")
    return raw.astype(np.float32) / 255.0


# --------------------------------------------------------------------------- the viewer


def image_display(*, image: Image) -> tuple[dict[str, Any], bytes]:
    """The full pixel matrix for the study page's viewer, losslessly, and how to show it.

    DICOM: the stored values after the modality LUT (DICOM order: the page applies the window
    and then the MONOCHROME1 inversion), packed as 16-bit codes into an RGB PNG (R = high
    byte, G = low byte) because a browser decodes every PNG to 8 bits per channel;
    value = code * scale + offset. PNG/JPEG: the stored file itself (8-bit).
    Returns (description for the page, PNG/JPEG bytes).
    """
    with image.file.open("rb") as handle:
        data = handle.read()
    if image.format != Image.Format.DICOM:
        meta = {
            "encoding": "rgb8",
            "content_type": "image/png" if image.format == Image.Format.PNG else "image/jpeg",
            "offset": 0.0,
            "scale": 1.0,
            "invert": False,
            "window": {"center": 127.5, "width": 256.0},
            "range": {"min": 0.0, "max": 255.0},
        }
        return meta, data
    return _dicom_display(data)


def _dicom_display(data: bytes) -> tuple[dict[str, Any], bytes]:
    import cv2
    import numpy as np

    from core.imaging import load_dicom_values

    dicom = load_dicom_values(data, max_pixels=settings.RADTRIAGE_MAX_PIXELS)
    values = dicom.values
    lo, hi = float(values.min()), float(values.max())
    integral = bool(np.all(values == np.round(values)))
    scale = 1.0 if integral and hi - lo <= 65535 else max(hi - lo, 1e-9) / 65535.0
    codes = np.round((values - lo) / scale).astype(np.uint16)
    bgr = np.zeros((*codes.shape, 3), dtype=np.uint8)
    bgr[..., 2] = codes >> 8
    bgr[..., 1] = codes & 0xFF
    ok, buffer = cv2.imencode(".png", bgr)
    if not ok:
        raise ValueError("PNG encoding of the pixel data failed")
    center, width = dicom.window or ((lo + hi) / 2.0, max(hi - lo, 1.0))
    p1, p99 = (float(v) for v in np.percentile(values, [1, 99]))
    meta = {
        "encoding": "rg16",
        "content_type": "image/png",
        "offset": lo,
        "scale": scale,
        "invert": dicom.monochrome1,
        "window": {"center": center, "width": width},
        "range": {"min": lo, "max": hi},
        "auto_window": {"center": (p1 + p99) / 2.0, "width": max(p99 - p1, 1.0)},
    }
    return meta, buffer.tobytes()


def condition_models(*, condition: str) -> list[dict[str, Any]]:
    """The registry's models for a condition, for a re-run with another model. Empty when the
    registry cannot be read (the page then offers no re-run, and says nothing false)."""
    from core.errors import RadTriageError
    from core.registry import Registry

    try:
        registry = Registry.load(settings.RADTRIAGE_REGISTRY)
    except (RadTriageError, OSError, ValueError):
        return []
    active = registry.active_models.get(condition)
    return [
        {"id": e.id, "status": e.status, "active": e.id == active}
        for e in sorted(registry.models.values(), key=lambda e: e.id)
        if e.condition == condition
    ]


def verdict_counts() -> list[dict[str, Any]]:
    """Current verdicts counted per model (id and checksum), condition and verdict."""
    from web.clinical.models import Annotation

    return list(
        Annotation.objects.exclude(verdict="")
        .values(
            model_id=F("analysis__model_id"),
            model_sha256=F("analysis__model_sha256"),
            condition=F("analysis__condition"),
            verdict_value=F("verdict"),
        )
        .annotate(count=Count("pk"))
        .order_by("model_id", "condition", "verdict_value")
    )


def image_annotations(*, image_id: int) -> QuerySet[Any]:
    """The drawings and notes on an image, oldest first (verdicts are shown on their results)."""
    from web.clinical.models import Annotation

    return Annotation.objects.filter(image_id=image_id, verdict="").select_related("author")


def analysis_heatmap_raw(*, analysis: Analysis) -> Any:
    """The stored Grad-CAM map as float32 (h, w) in [0, 1] (for DICOM results)."""
    return _raw_heatmap(analysis)


# --------------------------------------------------------------------------- the audit log

# The audit log's filters, as query parameters (the admin's list and its CSV export share them).
AUDIT_FILTERS = ("user", "action", "patient", "study", "since", "until")


class BadAuditFilter(ValueError):
    pass


def _audit_date(name: str, raw: str) -> dt.date:
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise BadAuditFilter(f"`{name}` must be a date like 2026-12-01, not {raw!r}.") from None


def audit_event_list(
    *,
    user: str = "",
    action: str = "",
    patient: str = "",
    study: str = "",
    since: str = "",
    until: str = "",
) -> QuerySet[Any]:
    """Audit rows, newest first, filtered by: username, action, patient ID (MRN), study (its id,
    accession number or StudyInstanceUID), and a date range (inclusive, the site's TIME_ZONE).
    A badly formed date raises BadAuditFilter."""
    events = AuditEvent.objects.select_related("patient", "study").order_by("-at", "-id")
    return audit_event_filter(
        events, user=user, action=action, patient=patient, study=study, since=since, until=until
    )


def audit_event_filter(
    events: QuerySet[Any],
    *,
    user: str = "",
    action: str = "",
    patient: str = "",
    study: str = "",
    since: str = "",
    until: str = "",
) -> QuerySet[Any]:
    """audit_event_list's filters, on any query of audit rows (the admin's list)."""
    if user := user.strip():
        events = events.filter(actor_label__iexact=user)
    if action := action.strip():
        events = events.filter(action=action)
    if patient := patient.strip():
        events = events.filter(patient__patient_id=patient)
    if study := study.strip():
        match = Q(study__accession_number=study) | Q(study__study_instance_uid=study)
        if study.isdigit():
            match |= Q(study_id=int(study))
        events = events.filter(match)
    if since := since.strip():
        events = events.filter(at__date__gte=_audit_date("since", since))
    if until := until.strip():
        events = events.filter(at__date__lte=_audit_date("until", until))
    return events


def audit_filters_from(params: Mapping[str, str]) -> dict[str, str]:
    return {name: params.get(name, "") for name in AUDIT_FILTERS}
