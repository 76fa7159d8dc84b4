"""Reads of patient data, audited at one layer: the functions here select what a person is
about to see (a study, an image's pixels, an analysis, an annotation, a page of the worklist)
and write the audit row as they hand it over. Pages and endpoints fetch patient data through
them instead of writing audit rows of their own, so an endpoint cannot forget it (and
tests/web/test_read_audit.py calls every read route and counts the rows).

One row per read, recorded by audit_record_read: the same read repeated by the same person
within RADTRIAGE_AUDIT_REPEAT_SECONDS (a page and its script's refresh) adds none. A list
records one row naming the studies it showed; a single study's rows carry its patient and
study, so the audit log's patient and study filters find them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db.models import Model

from web.clinical.audit.records import audit_record_read
from web.clinical.models import Analysis, Annotation, AuditEvent, Image, Study


class Read:
    """The read actions: what a person saw."""

    WORKLIST = "worklist.view"  # a page of the worklist (the page, or /api/studies/)
    STUDY = "study.view"  # the study page, or the study with its images and results
    REPORTS = "report.view"  # the study's report versions
    ANALYSIS = "analysis.view"  # one AI result (its card, or the API's detail)
    HEATMAP = "heatmap.download"  # an AI result's heat map
    DICOM_SC = "dicom_sc.download"  # the heat map as a DICOM Secondary Capture
    THUMBNAIL = "image.thumbnail"  # an image's thumbnail
    DISPLAY = "image.display"  # how the viewer shows an image (size, windowing)
    PIXELS = "image.view"  # an image's full-resolution pixels
    DICOM_SR = "dicom_sr.download"  # an image's AI results as a DICOM SR
    ANNOTATIONS = "annotation.view"  # the team's annotations on an image, or one of them
    VERDICTS = "verdict.view"  # the radiologists' verdicts on an AI result
    PACS_SENDS = "pacs_send.view"  # where an image's results were sent
    DICOMWEB_QUERY = "dicomweb.query"  # a QIDO-RS answer: the studies it named
    DICOMWEB_RETRIEVE = "dicomweb.retrieve"  # a WADO-RS answer: instances, metadata or a picture


# Reads recorded by the service that produces them (a PDF is rendered, then handed over).
RECORDED_ELSEWHERE = {"report.download": "web.clinical.reporting.reports.report_pdf_for_download"}
READ_ACTIONS = frozenset(
    {value for name, value in vars(Read).items() if name.isupper()} | set(RECORDED_ELSEWHERE)
)


@dataclass(frozen=True)
class Reader:
    """Who reads, and from where (for the audit row)."""

    user: Any
    ip_address: str | None = None


def reader_of(request: Any) -> Reader:
    """The person behind a request (Django's or DRF's)."""
    return Reader(user=request.user, ip_address=request.META.get("REMOTE_ADDR") or None)


# --------------------------------------------------------------------------- selectors


def study_read(*, study_id: int, reader: Reader, action: str = Read.STUDY, full: bool = False) -> Study:
    """The study (`full`: with its images and their results, strongest first), read by
    `reader`. Raises Study.DoesNotExist."""
    if full:
        from web.clinical.worklist.queries import study_detail

        study = study_detail(study_id=study_id)
    else:
        study = Study.objects.select_related("patient", "assigned_radiologist").get(pk=study_id)
    _record(reader, action, study=study, obj=study)
    return study


def studies_read(*, rows: Sequence[Study], reader: Reader, action: str = Read.WORKLIST) -> None:
    """A list of studies shown to `reader` (a page of the worklist): one row naming them, with
    the patient and study when there is only one; nothing when the list is empty."""
    studies = list(rows)
    if not studies:
        return
    only = studies[0] if len(studies) == 1 else None
    _record(reader, action, study=only, detail={"studies": [s.pk for s in studies]})


def image_read(*, image_id: int, reader: Reader, action: str) -> Image:
    """An image (its pixels, thumbnail, annotations, results), read by `reader`. Raises
    Image.DoesNotExist."""
    image = Image.objects.select_related("study__patient").get(pk=image_id)
    _record(reader, action, study=image.study, obj=image)
    return image


def analysis_read(
    *, analysis_id: int, reader: Reader, action: str, detail: dict[str, Any] | None = None
) -> Analysis:
    """An AI result (or its heat map, its verdicts), read by `reader`. Raises
    Analysis.DoesNotExist."""
    analysis = Analysis.objects.select_related("image__study__patient").get(pk=analysis_id)
    _record(reader, action, study=analysis.image.study, obj=analysis, detail=detail)
    return analysis


def annotation_read(*, annotation_id: int, reader: Reader) -> Annotation:
    """One annotation, read by `reader`. Raises Annotation.DoesNotExist."""
    annotation = Annotation.objects.select_related("author", "image__study__patient").get(pk=annotation_id)
    _record(reader, Read.ANNOTATIONS, study=annotation.image.study, obj=annotation)
    return annotation


def dicomweb_instances_read(
    *, reader: Reader, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None, what: str
) -> tuple[Study, list[Any]]:
    """The instances under these UIDs (web.clinical.dicomweb.wado.instances_find), read by
    `reader` over WADO-RS (`what`: files, metadata or rendered). Raises wado.NotFound."""
    from web.clinical.dicomweb.wado import instances_find

    study, instances = instances_find(study_uid, series_uid, sop_uid)
    detail = {"what": what, "instances": [i.sop_uid for i in instances][:100]}
    _record(reader, Read.DICOMWEB_RETRIEVE, study=study, obj=study, detail=detail)
    return study, instances


def _record(
    reader: Reader,
    action: str,
    *,
    study: Study | None,
    obj: Model | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEvent | None:
    if action not in READ_ACTIONS:
        raise ValueError(f"'{action}' is not a read action (web.clinical.audit.reads.Read).")
    if not getattr(reader.user, "is_authenticated", False):
        return None  # the access rules refuse anonymous reads before this is reached
    return audit_record_read(
        actor=reader.user,
        action=action,
        patient=study.patient if study is not None else None,
        study=study,
        obj=obj,
        detail=detail,
        ip_address=reader.ip_address,
    )
