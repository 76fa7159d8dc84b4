"""The AI results of one image as a DICOM Comprehensive SR: per condition, its probability,
the model's threshold, the result in words (or not applicable / experimental / placeholder) and
the model, each referencing the source instance, in the source's study."""

from __future__ import annotations

from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from core.conditions import get_condition
from web.clinical.analysis.findings import current_results, result_kind
from web.clinical.dicom.reference import (
    BANNER,
    MANUFACTURER,
    SR_SERIES_DESCRIPTION,
    SR_SERIES_NUMBER,
    ResultNotReady,
    reference_dataset,
    sr_uids,
)
from web.clinical.models import Analysis, Image

SCHEME = "99RADTRIAGE"  # private coding scheme for what DCM/LOINC has no code for
TITLE = Code("18748-4", "LN", "Diagnostic imaging report")
FINDING = Code("121071", "DCM", "Finding")
COMMENT = Code("121106", "DCM", "Comment")
ALGORITHM_NAME = Code("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = Code("111003", "DCM", "Algorithm Version")
SOURCE = Code("121112", "DCM", "Source of Measurement")
CONDITION = Code("RT-CONDITION", SCHEME, "Condition")
PROBABILITY = Code("RT-PROBABILITY", SCHEME, "AI probability")
THRESHOLD = Code("RT-THRESHOLD", SCHEME, "Decision threshold")
RESULT = Code("RT-RESULT", SCHEME, "AI result")
NO_UNITS = Code("1", "UCUM", "no units")
CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS


def image_structured_report(*, image: Image) -> Dataset:
    """The current result of each condition of the image (analysis.findings.current_results,
    the rule the PDF follows too), strongest first, as a Comprehensive SR."""
    analyses = current_results(image.analyses.filter(state=Analysis.State.SUCCEEDED))
    if not analyses:
        raise ResultNotReady(f"Image {image.pk} has no finished analysis yet.")
    ref, repairs = reference_dataset(image)
    series_uid, sop_uid = sr_uids(image, analyses)
    root = hd.sr.ContainerContentItem(name=TITLE)
    root.ContentSequence = hd.sr.ContentSequence(
        [hd.sr.TextContentItem(name=COMMENT, value=BANNER, relationship_type=CONTAINS)]
        + [hd.sr.TextContentItem(name=COMMENT, value=note, relationship_type=CONTAINS) for note in repairs]
        + [_finding(a, ref) for a in analyses]
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=[ref],
        content=root,
        series_instance_uid=series_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,  # preliminary, unverified: an AI result, not a report
        is_verified=False,
    )
    sr.SeriesDescription = SR_SERIES_DESCRIPTION
    return sr


def result_words(analysis: Analysis) -> str:
    """The AI result in words, by the finding rule's kind: a placeholder's, a not-applicable or
    an experimental result never reads as a plain positive."""
    kind = result_kind(analysis)
    label = "positive" if analysis.positive else "negative"
    if kind == "placeholder":
        return f"placeholder, no trained model: {analysis.placeholder_reason}"[:1024]
    if kind == "not_applicable":
        return f"not applicable: {analysis.not_applicable_reason}"[:1024]
    if kind == "experimental":
        return f"experimental model, {label}: {analysis.experimental_reason}"[:1024]
    return "positive" if kind == "finding" else "negative"


def _finding(analysis: Analysis, ref: Dataset) -> hd.sr.ContainerContentItem:
    try:
        label = get_condition(analysis.condition).label
    except Exception:  # noqa: BLE001 - a condition since removed still has its code
        label = analysis.condition
    items: list[Any] = [
        hd.sr.TextContentItem(name=CONDITION, value=label, relationship_type=CONTAINS),
        hd.sr.NumContentItem(
            name=PROBABILITY,
            value=float(analysis.probability or 0.0),
            unit=NO_UNITS,
            relationship_type=CONTAINS,
        ),
    ]
    if analysis.threshold is not None:
        items.append(
            hd.sr.NumContentItem(
                name=THRESHOLD, value=float(analysis.threshold), unit=NO_UNITS, relationship_type=CONTAINS
            )
        )
    items += [
        hd.sr.TextContentItem(name=RESULT, value=result_words(analysis), relationship_type=CONTAINS),
        hd.sr.TextContentItem(
            name=ALGORITHM_NAME, value=analysis.model_id or "?", relationship_type=CONTAINS
        ),
        hd.sr.TextContentItem(
            name=ALGORITHM_VERSION, value=(analysis.model_sha256 or "?")[:64], relationship_type=CONTAINS
        ),
        hd.sr.ImageContentItem(
            name=SOURCE,
            referenced_sop_class_uid=ref.SOPClassUID,
            referenced_sop_instance_uid=ref.SOPInstanceUID,
            relationship_type=CONTAINS,
        ),
    ]
    finding = hd.sr.ContainerContentItem(name=FINDING, relationship_type=CONTAINS)
    finding.ContentSequence = hd.sr.ContentSequence(items)
    return finding
