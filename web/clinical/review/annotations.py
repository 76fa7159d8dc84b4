"""Reading-room review: annotations drawn on an image and verdicts on AI results.

Each user action is audited once and, after commit, sent to the study's live group so that
colleagues with the study open see it without reloading.
"""

from __future__ import annotations

import math
from typing import Any

from django.db import transaction

from core.conditions import CONDITIONS
from web.clinical.audit.records import audit_record
from web.clinical.events import analyses_event_publish, annotation_event_publish
from web.clinical.models import Analysis, Annotation, Image

MAX_SHAPES = 50
MAX_POINTS = 5000
MAX_NOTE = 2000

# type -> the numeric fields it needs (image pixel coordinates; freehand and angle also have
# "points": an angle's are [first ray's end, vertex, second ray's end]).
SHAPE_FIELDS: dict[str, tuple[str, ...]] = {
    "rect": ("x", "y", "w", "h"),
    "ellipse": ("x", "y", "w", "h"),
    "arrow": ("x1", "y1", "x2", "y2"),
    "length": ("x1", "y1", "x2", "y2"),  # a measured distance (review.measure)
    "freehand": (),
    "text": ("x", "y"),
    "angle": (),  # a measured angle (review.measure)
}
# type -> how many points it takes (at least, at most), and what it is called.
SHAPE_POINTS: dict[str, tuple[int, int, str]] = {
    "freehand": (2, MAX_POINTS, "a freehand line"),
    "angle": (3, 3, "an angle"),
}


class ReviewRejected(Exception):
    """The request is malformed or not allowed for this result (HTTP 400)."""


class ReviewForbidden(Exception):
    """The user may not change this row (HTTP 403): only its author may."""


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ReviewRejected(f"{what} must be a finite number.")
    return float(value)


def shapes_clean(shapes: Any) -> list[dict[str, Any]]:
    """Validated shapes, keeping only the known fields: [{"type", ...coordinates}]."""
    if not isinstance(shapes, list):
        raise ReviewRejected("Shapes must be a JSON list.")
    if len(shapes) > MAX_SHAPES:
        raise ReviewRejected(f"At most {MAX_SHAPES} shapes per annotation.")
    clean: list[dict[str, Any]] = []
    for index, shape in enumerate(shapes):
        kind = shape.get("type") if isinstance(shape, dict) else None
        if kind not in SHAPE_FIELDS:
            raise ReviewRejected(f"Shape {index}: type must be one of {', '.join(SHAPE_FIELDS)}.")
        out: dict[str, Any] = {"type": kind}
        for name in SHAPE_FIELDS[kind]:
            out[name] = _number(shape.get(name), f"Shape {index}: {name}")
        if kind in SHAPE_POINTS:
            least, most, called = SHAPE_POINTS[kind]
            points = shape.get("points")
            if not isinstance(points, list) or not least <= len(points) <= most:
                needs = f"{least} to {most}" if least != most else str(least)
                raise ReviewRejected(f"Shape {index}: {called} needs {needs} points.")
            out["points"] = [
                [_number(p[0], f"Shape {index}: point"), _number(p[1], f"Shape {index}: point")]
                if isinstance(p, list | tuple) and len(p) == 2
                else _number(None, f"Shape {index}: point")
                for p in points
            ]
        if kind == "text" and isinstance(shape.get("text"), str):
            out["text"] = shape["text"][:MAX_NOTE]
        clean.append(out)
    return clean


def _note_clean(note: Any) -> str:
    if not isinstance(note, str):
        raise ReviewRejected("The note must be text.")
    if len(note) > MAX_NOTE:
        raise ReviewRejected(f"The note is longer than {MAX_NOTE} characters.")
    return note.strip()


def _audit(*, actor: Any, action: str, annotation: Annotation, ip_address: str | None, **detail: Any) -> None:
    study = annotation.image.study
    audit_record(
        actor=actor,
        action=action,
        patient=study.patient,
        study=study,
        obj=annotation,
        ip_address=ip_address,
        detail=detail,
    )


def annotation_create(
    *,
    image: Image,
    author: Any,
    shapes: Any,
    note: Any = "",
    analysis: Analysis | None = None,
    missed_condition: str = "",
    ip_address: str | None = None,
) -> Annotation:
    """A drawing (and/or a note) on the image, by `author`, shown to the whole team. With
    `missed_condition`: a finding the AI missed, of that condition, where the shapes say."""
    clean = shapes_clean(shapes)
    text = _note_clean(note)
    if not clean and not text:
        raise ReviewRejected("An annotation needs a shape or a note.")
    if analysis is not None and analysis.image_id != image.pk:
        raise ReviewRejected("The analysis belongs to another image.")
    if missed_condition and missed_condition not in CONDITIONS:
        raise ReviewRejected(f"The missed finding's condition must be one of {', '.join(CONDITIONS)}.")
    if missed_condition and not any(s["type"] in ("rect", "ellipse", "freehand") for s in clean):
        raise ReviewRejected(
            "Draw where the missed finding is (a rectangle, an ellipse or a freehand outline)."
        )
    with transaction.atomic():
        annotation = Annotation.objects.create(
            image=image,
            author=author,
            shapes=clean,
            note=text,
            analysis=analysis,
            missed_condition=missed_condition,
        )
        _audit(
            actor=author,
            action="finding.missed" if missed_condition else "annotation.create",
            annotation=annotation,
            ip_address=ip_address,
            shapes=[s["type"] for s in clean],
            **({"condition": missed_condition} if missed_condition else {}),
        )
        annotation_event_publish(annotation=annotation, event="created")
    return annotation


def _own(annotation: Annotation, actor: Any) -> None:
    if annotation.author_id != getattr(actor, "pk", None):
        raise ReviewForbidden("Only its author may change or delete an annotation.")


def annotation_update(
    *,
    annotation: Annotation,
    actor: Any,
    shapes: Any = None,
    note: Any = None,
    ip_address: str | None = None,
) -> Annotation:
    """Change the shapes and/or the note of one's own annotation."""
    _own(annotation, actor)
    if annotation.verdict:
        raise ReviewRejected("This is a verdict; change it on its result.")
    fields = ["updated_at"]
    if shapes is not None:
        annotation.shapes = shapes_clean(shapes)
        fields.append("shapes")
    if note is not None:
        annotation.note = _note_clean(note)
        fields.append("note")
    if not annotation.shapes and not annotation.note:
        raise ReviewRejected("An annotation needs a shape or a note; delete it instead.")
    with transaction.atomic():
        annotation.save(update_fields=fields)
        _audit(
            actor=actor,
            action="annotation.update",
            annotation=annotation,
            ip_address=ip_address,
            changed=fields[1:],
        )
        annotation_event_publish(annotation=annotation, event="updated")
    return annotation


def annotation_delete(*, annotation: Annotation, actor: Any, ip_address: str | None = None) -> None:
    _own(annotation, actor)
    if annotation.verdict:
        raise ReviewRejected("This is a verdict; change it on its result.")
    with transaction.atomic():
        _audit(actor=actor, action="annotation.delete", annotation=annotation, ip_address=ip_address)
        annotation_event_publish(annotation=annotation, event="deleted")
        annotation.delete()


def analysis_accepts_verdict(analysis: Analysis) -> bool:
    """A result a radiologist can agree or disagree with: a real model's output for an image
    in its population (never a placeholder's, never a result that was not shown)."""
    return (
        analysis.state == Analysis.State.SUCCEEDED
        and not analysis.is_placeholder
        and analysis.applicable is not False
    )


def verdict_set(
    *,
    analysis: Analysis,
    author: Any,
    verdict: str,
    comment: Any = "",
    reason: str = "",
    ip_address: str | None = None,
) -> tuple[Annotation, bool]:
    """The author's current verdict on one AI result: the first call creates it, later ones
    change it. A disagreement needs its reason (Annotation.DisagreeReason); another verdict
    has none. Colleagues with the study open see it at once. Returns (verdict row, created)."""
    if verdict not in Annotation.Verdict.values:
        raise ReviewRejected(f"The verdict must be one of {', '.join(Annotation.Verdict.values)}.")
    if verdict == Annotation.Verdict.DISAGREE and reason not in Annotation.DisagreeReason.values:
        raise ReviewRejected(
            "Say why you disagree: one of " + ", ".join(Annotation.DisagreeReason.values) + "."
        )
    reason = reason if verdict == Annotation.Verdict.DISAGREE else ""
    if not analysis_accepts_verdict(analysis):
        raise ReviewRejected("This result has no finding to judge (not finished, placeholder or not shown).")
    text = _note_clean(comment)
    with transaction.atomic():
        row = (
            Annotation.objects.select_for_update()
            .filter(analysis=analysis, author=author)
            .exclude(verdict="")
            .first()
        )
        created = row is None
        previous = "" if row is None else row.verdict
        if row is None:
            row = Annotation.objects.create(
                image_id=analysis.image_id,
                author=author,
                analysis=analysis,
                verdict=verdict,
                verdict_reason=reason,
                note=text,
            )
        else:
            row.verdict, row.verdict_reason, row.note = verdict, reason, text
            row.save(update_fields=["verdict", "verdict_reason", "note", "updated_at"])
        row.analysis = analysis
        audit_record(
            actor=author,
            action="verdict.set",
            patient=analysis.image.study.patient,
            study=analysis.image.study,
            obj=row,
            ip_address=ip_address,
            detail={
                "analysis": analysis.pk,
                "verdict": verdict,
                "reason": reason,
                "previous": previous,
                "model_id": analysis.model_id,
                "condition": analysis.condition,
            },
        )
        analyses_event_publish(analyses=[analysis], event="verdict")  # colleagues' cards redraw
    return row, created
