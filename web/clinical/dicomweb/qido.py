"""QIDO-RS (PS3.18 10.6): search for studies, series and instances; answers in DICOM JSON.

Matching keys are given by keyword or tag (`PatientID` or `00100020`), each once:
- PatientID, AccessionNumber, PatientName: single-value matching, `*` and `?` wildcards
  (PatientName case-insensitive);
- StudyDate: a date, or a range `A-B`, `A-` or `-B` (YYYYMMDD);
- StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID: a list of UIDs (`,` or `\\`);
- ModalitiesInStudy (study level) and Modality (series and instance level).
`limit` (at most MAX_LIMIT) and `offset` page the answer; `includefield` adds attributes
(`all`, or keywords / tags) where the records or the stored header hold them. A key the
service does not match on is ignored and said in the answer's warnings.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Q, QuerySet
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset

from web.clinical.dicomweb.catalogue import Instance, instance_attributes_for, study_instances
from web.clinical.models import Analysis, Image, Study

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
STUDY_KEYS = (
    "PatientID",
    "PatientName",
    "AccessionNumber",
    "StudyDate",
    "StudyInstanceUID",
    "ModalitiesInStudy",
)
SERIES_KEYS = ("SeriesInstanceUID", "Modality", "SeriesNumber")
INSTANCE_KEYS = ("SOPInstanceUID", "SOPClassUID", "InstanceNumber")
IGNORED_PARAMETERS = ("fuzzymatching", "StudyTime", "ReferringPhysicianName", "StudyID")


class QueryError(ValueError):
    """The query cannot be answered as asked (`str()` says why, for a 400)."""


@dataclass
class Query:
    """A parsed QIDO-RS query string."""

    match: dict[str, str] = field(default_factory=dict)  # keyword -> value
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    include_all: bool = False
    include: list[str] = field(default_factory=list)  # extra keywords asked for
    warnings: list[str] = field(default_factory=list)


def query_parse(params: Mapping[str, Sequence[str]], *, keys: Sequence[str]) -> Query:
    """The query string (every value of each name) -> Query; QueryError when unreadable."""
    query = Query()
    for name, values in params.items():
        if name in ("limit", "offset"):
            setattr(query, name, _count(name, values[-1]))
        elif name == "includefield":
            for value in (v for raw in values for v in raw.split(",")):
                if value.strip().lower() == "all":
                    query.include_all = True
                elif value.strip():
                    query.include.append(_keyword(value.strip()))
        else:
            keyword = _keyword(name)
            if keyword in keys:
                query.match[keyword] = values[-1]
            else:
                query.warnings.append(f"{name}: not a matching key here; ignored.")
    if query.limit > MAX_LIMIT:
        query.warnings.append(f"limit: at most {MAX_LIMIT} answers are returned.")
        query.limit = MAX_LIMIT
    if "StudyDate" in query.match:
        _date_range(query.match["StudyDate"])  # checked now: a bad date is a 400
    return query


def studies_search(
    query: Query, *, within: QuerySet[Study] | None = None
) -> tuple[list[Study], list[Dataset]]:
    """Studies matching the query, one page: (the studies, their DICOM JSON data sets)."""
    studies = list(_studies(query, within)[query.offset : query.offset + query.limit])
    return studies, [_study_dataset(study, query) for study in studies]


def series_search(query: Query, *, study_uid: str | None = None) -> tuple[list[Study], list[Dataset]]:
    """Series matching the query (within one study when given), one page."""
    seen: list[Study] = []
    answers: list[Dataset] = []
    for study, series in _series_of(query, study_uid):
        first = series[0]
        if not _series_matches(first, len(series), query):
            continue
        answers.append(_series_dataset(study, first, len(series), query))
        if not seen or seen[-1].pk != study.pk:
            seen.append(study)
    page = answers[query.offset : query.offset + query.limit]
    return _studies_shown(seen, page), page


def instances_search(
    query: Query, *, study_uid: str | None = None, series_uid: str | None = None
) -> tuple[list[Study], list[Dataset]]:
    """Instances matching the query (within one study, or one series, when given), one page."""
    seen: list[Study] = []
    answers: list[Dataset] = []
    for study, series in _series_of(query, study_uid):
        if series_uid and series[0].series_uid != series_uid:
            continue
        for instance in series:
            if _series_matches(instance, len(series), query) and _instance_matches(instance, query):
                answers.append(_instance_dataset(study, instance, query))
                if not seen or seen[-1].pk != study.pk:
                    seen.append(study)
    page = answers[query.offset : query.offset + query.limit]
    return _studies_shown(seen, page), page


# --------------------------------------------------------------------------- matching


def _studies(query: Query, within: QuerySet[Study] | None) -> QuerySet[Study]:
    studies = (within if within is not None else Study.objects.all()).select_related("patient")
    match = query.match
    for keyword, column in (("PatientID", "patient__patient_id"), ("AccessionNumber", "accession_number")):
        if keyword in match:
            studies = studies.filter(_wildcard(column, match[keyword], case=True))
    if "PatientName" in match:
        studies = studies.filter(_wildcard("patient__name", match["PatientName"], case=False))
    if "StudyInstanceUID" in match:
        studies = studies.filter(study_instance_uid__in=_uids(match["StudyInstanceUID"]))
    if "StudyDate" in match:
        start, end = _date_range(match["StudyDate"])
        if start:
            studies = studies.filter(study_date__gte=start)
        if end:
            studies = studies.filter(study_date__lte=end)
    if "ModalitiesInStudy" in match:
        studies = studies.filter(_modalities_q(_uids(match["ModalitiesInStudy"])))
    # A stored image's series or instance UID narrows the search to its study at once; an AI
    # result's UIDs are made, not stored, so those are found by looking through the studies.
    for keyword, column in (
        ("SeriesInstanceUID", "series_instance_uid"),
        ("SOPInstanceUID", "sop_instance_uid"),
    ):
        if keyword in match:
            stored = Image.objects.filter(**{f"{column}__in": _uids(match[keyword])}).values("study_id")
            if stored.exists():
                studies = studies.filter(pk__in=stored)
    return studies.order_by("pk")


def _modalities_q(modalities: list[str]) -> Q:
    wanted = Q(modality__in=modalities)
    done = Analysis.objects.filter(state=Analysis.State.SUCCEEDED)
    if "SR" in modalities:
        wanted |= Q(images__analyses__in=done)
    if "OT" in modalities:
        wanted |= Q(images__analyses__in=done.exclude(heatmap_raw=""))
    return Q(pk__in=Study.objects.filter(wanted).values("pk"))


def _series_of(query: Query, study_uid: str | None) -> Iterator[tuple[Study, list[Instance]]]:
    """Each matching study's series in turn (lazily: a page stops early)."""
    within = Study.objects.filter(study_instance_uid=study_uid) if study_uid else None
    for study in _studies(query, within).iterator(chunk_size=100):
        grouped: dict[str, list[Instance]] = {}
        for instance in study_instances(study):
            grouped.setdefault(instance.series_uid, []).append(instance)
        for series in grouped.values():
            yield study, series


def _series_matches(instance: Instance, size: int, query: Query) -> bool:
    match = query.match
    if "SeriesInstanceUID" in match and instance.series_uid not in _uids(match["SeriesInstanceUID"]):
        return False
    header = instance.attributes()
    if "Modality" in match and str(header.get("Modality", "")) not in _uids(match["Modality"]):
        return False
    return not ("SeriesNumber" in match and str(header.get("SeriesNumber", "")) != match["SeriesNumber"])


def _instance_matches(instance: Instance, query: Query) -> bool:
    match = query.match
    if "SOPInstanceUID" in match and instance.sop_uid not in _uids(match["SOPInstanceUID"]):
        return False
    header = instance.attributes()
    if "SOPClassUID" in match and str(header.get("SOPClassUID", "")) not in _uids(match["SOPClassUID"]):
        return False
    return not (
        "InstanceNumber" in match and str(header.get("InstanceNumber", "")) != match["InstanceNumber"]
    )


def _wildcard(column: str, pattern: str, *, case: bool) -> Q:
    if "*" not in pattern and "?" not in pattern:
        return Q(**{column if case else f"{column}__iexact": pattern})
    regex = "^" + "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern) + "$"
    return Q(**{f"{column}__regex" if case else f"{column}__iregex": regex})


def _uids(value: str) -> list[str]:
    return [v.strip() for v in re.split(r"[,\\]", value) if v.strip()]


def _date_range(value: str) -> tuple[dt.date | None, dt.date | None]:
    parts = value.split("-")
    if len(parts) > 2 or not any(parts):
        raise QueryError(f"StudyDate: '{value}' is not a date (YYYYMMDD) or a range (YYYYMMDD-YYYYMMDD).")
    dates = [_date(p.strip(), value) if p.strip() else None for p in parts]
    return (dates[0], dates[0]) if len(dates) == 1 else (dates[0], dates[1])


def _date(text: str, whole: str) -> dt.date:
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        raise QueryError(f"StudyDate: '{whole}' is not a date (YYYYMMDD) or a range.") from None


def _count(name: str, value: str) -> int:
    if not value.isdigit():
        raise QueryError(f"{name}: '{value}' is not a whole number.")
    return int(value)


def _keyword(name: str) -> str:
    """A keyword as given, or the keyword of a tag given as 8 hexadecimal digits."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        keyword = keyword_for_tag(int(name, 16))
        if not keyword:
            raise QueryError(f"{name}: not a tag of the DICOM dictionary.")
        return keyword
    if tag_for_keyword(name) is None:
        raise QueryError(f"{name}: not a DICOM keyword, a tag or a query parameter.")
    return name


# --------------------------------------------------------------------------- answers


def _study_dataset(study: Study, query: Query) -> Dataset:
    patient = study.patient
    instances = study_instances(study)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.StudyDate = study.study_date.strftime("%Y%m%d") if study.study_date else ""
    ds.StudyTime = ""
    ds.AccessionNumber = study.accession_number
    ds.InstanceAvailability = "ONLINE"
    ds.ModalitiesInStudy = sorted({str(i.attributes().get("Modality", "")) for i in instances} - {""})
    ds.ReferringPhysicianName = ""
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date.strftime("%Y%m%d") if patient.birth_date else ""
    ds.PatientSex = patient.sex
    ds.StudyInstanceUID = study.study_instance_uid
    ds.StudyID = ""
    ds.StudyDescription = study.description
    ds.NumberOfStudyRelatedSeries = len({i.series_uid for i in instances})
    ds.NumberOfStudyRelatedInstances = len(instances)
    return ds


def _series_dataset(study: Study, first: Instance, size: int, query: Query) -> Dataset:
    ds = first.attributes()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns"):
        if keyword in ds:
            del ds[keyword]
    ds.StudyInstanceUID = study.study_instance_uid
    ds.NumberOfSeriesRelatedInstances = size
    return _with_includes(ds, study, first, query)


def _instance_dataset(study: Study, instance: Instance, query: Query) -> Dataset:
    ds = instance.attributes()
    ds.StudyInstanceUID = study.study_instance_uid
    return _with_includes(ds, study, instance, query)


def _with_includes(ds: Dataset, study: Study, instance: Instance, query: Query) -> Dataset:
    asked = list(query.include)
    if query.include_all:
        asked += ["StudyDate", "AccessionNumber", "PatientID", "PatientName", "StudyDescription"]
    extra: dict[str, Any] = instance_attributes_for(instance, asked) if instance.kind == "image" else {}
    study_values = _study_dataset_light(study)
    for keyword in asked:
        if keyword in ds:
            continue
        if keyword in study_values:
            setattr(ds, keyword, study_values[keyword])
        elif keyword in extra and dictionary_VR(keyword) != "SQ":
            setattr(ds, keyword, extra[keyword])
    return ds


def _study_dataset_light(study: Study) -> dict[str, Any]:
    patient = study.patient
    return {
        "StudyDate": study.study_date.strftime("%Y%m%d") if study.study_date else "",
        "AccessionNumber": study.accession_number,
        "PatientID": patient.patient_id,
        "PatientName": patient.name,
        "StudyDescription": study.description,
    }


def _studies_shown(studies: list[Study], page: list[Dataset]) -> list[Study]:
    uids = {str(ds.StudyInstanceUID) for ds in page}
    return [s for s in studies if s.study_instance_uid in uids]
