"""A report version as a PDF (WeasyPrint): header, patient and study, each image beside its
heat-map overlays with the team's annotations drawn on it, the findings table, the annotations
and their notes, the report's clinical information, findings and impression, each under its
heading (and the versions signed before an addendum), the signer, and the fixed AI statement."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings
from django.template.loader import render_to_string

from core.conditions import get_condition
from core.wording import NOT_APPLICABLE, PLACEHOLDER
from web.clinical.analysis.findings import current_results, result_kind
from web.clinical.models import Analysis, Annotation, Image, Report, Study
from web.clinical.reporting.reports import report_sections
from web.clinical.review.measure import image_spacing, shape_measurement

AI_STATEMENT = (
    "AI output supports and does not replace the radiologist's reading. Heat maps show where "
    "the model looked, not a diagnosis."
)
PICTURE_MAX_SIDE = 900  # pixels: sharp in print at the width the page gives a picture


# The result column in words, by the finding rule's kind: placeholder, not-applicable and
# experimental outputs never appear as a result.
AI_RESULT_WORDS = {
    "finding": "Positive (AI flag)",
    "negative": "Negative",
    "experimental": "Experimental (not a finding)",
    "not_applicable": "Outside the model's population",
    "placeholder": "No AI result (placeholder model)",
}


@dataclass
class Finding:
    image_label: str
    condition: str
    probability: str
    threshold: str
    ai_result: str  # AI_RESULT_WORDS
    warning: str
    model: str
    verdicts: list[str] = field(default_factory=list)


@dataclass
class Note:
    """One annotation as the report lists it."""

    image_label: str
    author: str
    about: str  # the result it concerns ("Pneumonia: Disagree"), or "-"
    marks: str  # "2 marks: box, arrow", or "-"
    note: str


@dataclass
class Picture:
    caption: str
    data_uri: str


def report_pdf_bytes(report: Report) -> bytes:
    return html_pdf_bytes(report_html(report))


def html_pdf_bytes(html: str) -> bytes:
    """A self-contained HTML page (inline images and SVG, no network) as PDF bytes."""
    from PIL import ImageFile

    truncated_allowed = ImageFile.LOAD_TRUNCATED_IMAGES
    from weasyprint import HTML  # its import switches Pillow to accept truncated images...

    ImageFile.LOAD_TRUNCATED_IMAGES = truncated_allowed  # ...which uploads must never do
    return HTML(string=html).write_pdf()


def report_html(report: Report) -> str:
    study = report.study
    images = list(
        study.images.order_by("created_at", "id").prefetch_related(
            "analyses", "annotations__author", "annotations__analysis"
        )
    )
    earlier = list(
        study.reports.filter(state=Report.State.SIGNED, version__lt=report.version)
        .select_related("signed_by")
        .order_by("version")
    )
    for earlier_report in earlier:
        earlier_report.sections = report_sections(earlier_report)  # type: ignore[attr-defined]
    context = {
        "institution": settings.RADTRIAGE_INSTITUTION_NAME,
        "institution_address": settings.RADTRIAGE_INSTITUTION_ADDRESS,
        "report": report,
        # The impression closes the report with the signature: the fields before it here.
        "sections": report_sections(report, leave_out=("impression",)),
        "study": study,
        "patient": study.patient,
        "earlier": earlier,
        "figures": [_pictures(index, image) for index, image in enumerate(images, start=1)],
        "findings": report_findings(study),
        "notes": report_notes(images),
        "statement": AI_STATEMENT,
        "signer": _person(report.signed_by) if report.signed_by else "",
        "author": _person(report.author),
    }
    return render_to_string("clinical/report_pdf.html", context)


def _person(user: Any) -> str:
    full = user.get_full_name() if hasattr(user, "get_full_name") else ""
    return f"{full} ({user.get_username()})" if full else user.get_username()


def report_findings(study: Study) -> list[Finding]:
    """The findings table: each image's current result per condition (analysis.findings), the
    strongest first, as the report shows them."""
    images = study.images.order_by("created_at", "id").prefetch_related("analyses", "annotations")
    return [f for index, image in enumerate(images, start=1) for f in _findings(index, image)]


def _findings(index: int, image: Image) -> list[Finding]:
    rows = []
    for analysis in current_results(image.analyses.all()):
        rows.append(
            Finding(
                image_label=f"Image {index}",
                condition=get_condition(analysis.condition).label,
                probability=_number(None if analysis.is_placeholder else analysis.probability),
                threshold=_number(None if analysis.is_placeholder else analysis.threshold),
                ai_result=AI_RESULT_WORDS[result_kind(analysis) or ""],
                warning=_warning(analysis),
                model=f"{analysis.model_id} (sha256 {analysis.model_sha256[:12] or 'none: no artifact'})",
                verdicts=_verdicts(image, analysis),
            )
        )
    return rows


def report_ai_text(study: Study) -> str:
    """The AI's current results as lines a radiologist inserts into the report with one click,
    each naming its model (id and checksum), in the words of the findings table."""
    return "\n".join(
        f"AI, {f.image_label.lower()}: {f.condition}: {f.ai_result}"
        + (f", probability {f.probability} (threshold {f.threshold})" if f.probability != "-" else "")
        + f"; model {f.model}."
        for f in report_findings(study)
    )


def report_notes(images: list[Image]) -> list[Note]:
    """Every annotation with a note or a drawn mark, image by image, oldest first."""
    notes = []
    for index, image in enumerate(images, start=1):
        for annotation in sorted(image.annotations.all(), key=lambda a: (a.created_at, a.pk)):
            if not annotation.note and not annotation.shapes:
                continue
            notes.append(
                Note(
                    image_label=f"Image {index}",
                    author=annotation.author.get_username(),
                    about=_about(annotation),
                    marks=_marks(annotation.shapes or [], image.dicom_header),
                    note=annotation.note,
                )
            )
    return notes


def _about(annotation: Annotation) -> str:
    if annotation.missed_condition:
        return f"Missed by the AI: {get_condition(annotation.missed_condition).label}"
    if annotation.analysis is None:
        return "-"
    about = get_condition(annotation.analysis.condition).label
    return f"{about}: {annotation.get_verdict_display()}" if annotation.verdict else about


def _marks(shapes: list[dict[str, Any]], header: dict[str, Any]) -> str:
    """ "3 marks: rect, length 23.4 mm, angle 42.0°": each shape, a measurement with its value."""
    if not shapes:
        return "-"
    spacing = image_spacing(header)
    words = []
    for shape in shapes:
        measured = shape_measurement(shape, spacing)
        words.append(
            f"{measured['kind']} {measured['text']}" if measured else str(shape.get("type") or "mark")
        )
    return f"{len(shapes)} mark{'s' if len(shapes) != 1 else ''}: {', '.join(words)}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _warning(analysis: Analysis) -> str:
    if analysis.is_placeholder:
        return PLACEHOLDER
    if analysis.applicable is False:
        return f"{NOT_APPLICABLE} {analysis.not_applicable_reason}".strip()
    if analysis.experimental:
        return analysis.experimental_reason or "Experimental model."
    return ""


def _verdicts(image: Image, analysis: Analysis) -> list[str]:
    said = []
    for note in image.annotations.all():
        if note.analysis_id == analysis.pk and note.verdict:
            comment = f": {note.note}" if note.note else ""
            why = f", {note.get_verdict_reason_display().lower()}" if note.verdict_reason else ""
            said.append(f"{note.get_verdict_display()}{why} ({note.author.get_username()}){comment}")
    return said


def _pictures(index: int, image: Image) -> list[Picture]:
    """The image with the annotations drawn on it, then one overlay per condition."""
    from core.imaging import load_xray
    from core.overlay import draw_hot_region, hot_region, render_overlay
    from web.clinical.viewer import _raw_heatmap

    with image.file.open("rb") as handle:
        gray = load_xray(handle.read(), max_pixels=settings.RADTRIAGE_MAX_PIXELS).pixels
    annotations = list(image.annotations.all())
    pictures = [
        Picture(
            f"Image {index}: {image.original_filename or image.sop_instance_uid}"
            + (f", {len([a for a in annotations if a.shapes])} annotation(s)" if annotations else ""),
            _data_uri(_fit(_draw_annotations(np.repeat(gray[:, :, None], 3, axis=2), annotations))),
        )
    ]
    for analysis in current_results(image.analyses.all()):
        if not analysis.heatmap_raw or analysis.is_placeholder:
            continue
        raw = _raw_heatmap(analysis)
        overlay = render_overlay(gray, raw)
        label = get_condition(analysis.condition).label
        caption = f"Image {index}: {label} heat map"
        if result_kind(analysis) == "finding":  # a finding's hot region, marked as on the screen
            overlay = draw_hot_region(overlay, hot_region(raw))
            caption += " (white outline: the hot region, half the peak and more; yellow box: around it)"
        pictures.append(Picture(caption, _data_uri(_fit(overlay))))
    return pictures


def _fit(rgb: np.ndarray) -> np.ndarray:
    import cv2

    height, width = rgb.shape[:2]
    scale = PICTURE_MAX_SIDE / max(height, width)
    if scale >= 1:
        return rgb
    return cv2.resize(rgb, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)


def _data_uri(rgb: np.ndarray) -> str:
    from core.overlay import encode_png

    return "data:image/png;base64," + base64.b64encode(encode_png(rgb)).decode()


ANNOTATION_COLOUR = (255, 196, 0)  # amber: readable over gray and over the JET colours


def _draw_annotations(rgb: np.ndarray, annotations: list[Annotation]) -> np.ndarray:
    """Draw each shape (web.clinical.review.shapes format) in image pixels."""
    from web.clinical.review.shapes import draw_shape

    canvas = np.ascontiguousarray(rgb)
    for annotation in annotations:
        for shape in annotation.shapes or []:
            draw_shape(canvas, shape, colour=ANNOTATION_COLOUR)
    return canvas
