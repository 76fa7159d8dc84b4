"""Selectors: read-only queries the views, API and consumers share."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import Count, OuterRef, Prefetch, QuerySet, Subquery
from django.db.models.functions import Coalesce

from web.clinical.models import Analysis, Image, Study


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


def study_worklist(*, status: str | None = None) -> QuerySet[Study]:
    """Studies for the worklist: most urgent first, AI-flagged first within a priority.

    `ai_flagged` (a column the services keep) counts only real findings: a placeholder
    model's positive is never a flag. The order is an index, so a page costs the same with a
    hundred studies or a million.
    """
    images = (
        Image.objects.filter(study=OuterRef("pk"))
        .order_by()
        .values("study")
        .annotate(n=Count("pk"))
        .values("n")[:1]
    )
    qs = (
        Study.objects.select_related("patient", "assigned_radiologist")
        .annotate(
            image_count=Coalesce(Subquery(images), 0),
            pending_count=_analysis_count(state__in=[Analysis.State.QUEUED, Analysis.State.RUNNING]),
            failed_count=_analysis_count(state=Analysis.State.FAILED),
        )
        .order_by("priority", "-ai_flagged", "-created_at", "-id")
    )
    if status:
        qs = qs.filter(status=status)
    return qs


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


def analysis_heatmap_raw(*, analysis: Analysis) -> Any:
    """The stored Grad-CAM map as float32 (h, w) in [0, 1] (for DICOM results)."""
    return _raw_heatmap(analysis)
