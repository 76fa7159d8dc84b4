"""The label rule for retraining: what the radiologists' verdicts and "AI missed" records say
about an image, as a training label (1 = the condition is present) and, for missed findings,
where it is.

What the AI said is read through the one finding rule (web.clinical.analysis.findings): a
verdict counts only on a result of kind "finding" or "negative". A placeholder's, an
experimental model's or a not-applicable result was never a reading, so agreeing or
disagreeing with it says nothing the label can rest on.

All current feedback on an image and condition decides together: when two verdicts (two
radiologists, or one on two results) give different labels, the image is left out for that
condition and counted as a conflict.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Q

from web.clinical.analysis.findings import result_kind
from web.clinical.models import Annotation, Image

VERDICT = Annotation.Verdict
AGREE, DISAGREE, UNCERTAIN = VERDICT.AGREE, VERDICT.DISAGREE, VERDICT.UNCERTAIN
REASON = Annotation.DisagreeReason
Box = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of width and height
REGION_SHAPES = ("rect", "ellipse", "freehand")


@dataclass(frozen=True)
class LabelRule:
    """One line of the rule: what the AI said, the verdict, its reason -> the label (None:
    left out) and the words the manifest and the summary use for it."""

    ai_said: str  # "finding", "negative" (findings.result_kind)
    verdict: str
    reason: str  # "" for agree
    label: int | None
    words: str


# The rule, written once; the docs (docs/models.md) and feedback.json show this table.
LABEL_RULES: tuple[LabelRule, ...] = (
    LabelRule("finding", AGREE, "", 1, "agree with an AI finding"),
    LabelRule("finding", DISAGREE, REASON.FALSE_POSITIVE, 0, "AI finding judged a false positive"),
    LabelRule("finding", DISAGREE, REASON.WRONG_LOCATION, 1, "AI finding present elsewhere (no region)"),
    LabelRule("finding", DISAGREE, REASON.OTHER_FINDING, None, "another finding, not this one"),
    LabelRule("finding", DISAGREE, REASON.IMAGE_QUALITY, None, "image quality too poor to judge"),
    LabelRule("negative", AGREE, "", 0, "agree with an AI negative"),
    LabelRule("negative", DISAGREE, REASON.FALSE_POSITIVE, 1, "disagree with an AI negative"),
    LabelRule("negative", DISAGREE, REASON.WRONG_LOCATION, 1, "disagree with an AI negative (no region)"),
    LabelRule("negative", DISAGREE, REASON.OTHER_FINDING, None, "another finding, not this one"),
    LabelRule("negative", DISAGREE, REASON.IMAGE_QUALITY, None, "image quality too poor to judge"),
)
MISSED_WORDS = "AI missed: drawn by a radiologist (region in the boxes CSV)"
UNCERTAIN_WORDS = "uncertain"
NOT_A_READING_WORDS = "the AI result was not a reading (placeholder, experimental, not applicable)"
_RULES = {(r.ai_said, r.verdict, r.reason): r for r in LABEL_RULES}


@dataclass(frozen=True)
class Vote:
    """What one feedback row says about its image and condition."""

    label: int | None
    words: str
    model_id: str = ""
    verdict: str = ""  # "agree", "disagree", "uncertain", or "missed"
    reason: str = ""
    boxes: tuple[Box, ...] = ()

    @property
    def extra(self) -> str:
        """The manifest's account of this vote: verdict[:reason], model, the rule's words."""
        what = f"{self.verdict}:{self.reason}" if self.reason else self.verdict
        model = f" model={self.model_id}" if self.model_id else ""
        return f"{what}{model} ({self.words})"


@dataclass
class Labelled:
    """One image's label for one condition, from the votes that agree on it."""

    image: Image
    condition: str
    label: int
    votes: list[Vote]
    boxes: list[Box] = field(default_factory=list)

    @property
    def extra(self) -> str:
        return "; ".join(v.extra for v in self.votes)


@dataclass
class Labels:
    labelled: list[Labelled]
    conflicts: Counter[str]  # condition -> images left out because the verdicts disagree
    set_aside: Counter[str]  # the rule's words -> votes that give no label


def vote_of(annotation: Annotation) -> Vote | None:
    """One verdict or "AI missed" row -> its vote (None: neither, or its result is gone)."""
    if annotation.missed_condition:
        image = annotation.image
        boxes = tuple(b for s in annotation.shapes if (b := shape_box(s, image.width, image.height)))
        return Vote(1, MISSED_WORDS, verdict="missed", boxes=boxes)
    analysis = annotation.analysis
    if not annotation.verdict or analysis is None:
        return None
    if annotation.verdict == UNCERTAIN:
        label, words = None, UNCERTAIN_WORDS
    else:
        rule = _RULES.get((result_kind(analysis) or "", annotation.verdict, annotation.verdict_reason))
        label, words = (rule.label, rule.words) if rule else (None, NOT_A_READING_WORDS)
    return Vote(label, words, analysis.model_id, annotation.verdict, annotation.verdict_reason)


def shape_box(shape: dict[str, Any], width: int, height: int) -> Box | None:
    """A drawn region (image pixels, as the viewer saves it) -> its bounding box as fractions
    of the image's width and height, clipped to the image; None for a shape that marks no
    region (an arrow, a measurement, a text) or one of no area."""
    kind = shape.get("type")
    if kind not in REGION_SHAPES or width <= 0 or height <= 0:
        return None
    if kind == "freehand":
        xs = [float(p[0]) for p in shape["points"]]
        ys = [float(p[1]) for p in shape["points"]]
    else:  # a width or height drawn leftwards or upwards is negative
        xs = [float(shape["x"]), float(shape["x"]) + float(shape["w"])]
        ys = [float(shape["y"]), float(shape["y"]) + float(shape["h"])]
    x0, x1 = (round(min(max(v / width, 0.0), 1.0), 4) for v in (min(xs), max(xs)))
    y0, y1 = (round(min(max(v / height, 0.0), 1.0), 4) for v in (min(ys), max(ys)))
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def feedback_labels(*, since: dt.datetime) -> Labels:
    """The labels of every image and condition with feedback given or changed since `since`;
    all of the current feedback on that image and condition decides its label."""
    changed = Annotation.objects.filter(updated_at__gte=since).filter(_is_feedback())
    pairs = {
        (a["image_id"], a["missed_condition"] or a["analysis__condition"])
        for a in changed.values("image_id", "analysis__condition", "missed_condition")
    }
    rows = (
        Annotation.objects.filter(image_id__in={image for image, _ in pairs})
        .filter(_is_feedback())
        .select_related("analysis", "image__study")
        .order_by("image_id", "created_at", "id")
    )
    votes: dict[tuple[int, str], list[Vote]] = defaultdict(list)
    images: dict[int, Image] = {}
    for row in rows:
        key = (row.image_id, row.missed_condition or (row.analysis.condition if row.analysis else ""))
        vote = vote_of(row)
        if key in pairs and vote is not None:
            votes[key].append(vote)
            images[row.image_id] = row.image
    return _decide(votes, images)


def _is_feedback() -> Q:
    return ~Q(verdict="") | ~Q(missed_condition="")


def _decide(votes: dict[tuple[int, str], list[Vote]], images: dict[int, Image]) -> Labels:
    out = Labels([], Counter(), Counter())
    for (image_id, condition), cast in sorted(votes.items()):
        counted = [v for v in cast if v.label is not None]
        out.set_aside.update(v.words for v in cast if v.label is None)
        found = {v.label for v in counted}
        if len(found) > 1:
            out.conflicts[condition] += 1
            continue
        if not found:
            continue
        boxes = [b for v in counted for b in v.boxes]
        label = found.pop()
        assert label is not None
        out.labelled.append(Labelled(images[image_id], condition, label, counted, boxes))
    return out


def rule_table(rules: Iterable[LabelRule] = LABEL_RULES) -> list[dict[str, Any]]:
    """The rule as rows (feedback.json): the verdict rules, then "AI missed", uncertain, and a
    result that was not a reading."""
    others = (
        LabelRule("any", "missed", "", 1, MISSED_WORDS),
        LabelRule("any", UNCERTAIN, "", None, UNCERTAIN_WORDS),
        LabelRule("other", "any", "", None, NOT_A_READING_WORDS),
    )
    return [
        {
            "ai_said": r.ai_said,
            "verdict": str(r.verdict),
            "reason": str(r.reason),
            "label": r.label,
            "words": r.words,
        }
        for r in (*rules, *others)
    ]
