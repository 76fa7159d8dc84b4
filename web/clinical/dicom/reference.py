"""The source instance an AI result derives from, as a header-only dataset, and the stable
UIDs of the results (the same analysis always yields the same instance: a re-send replaces)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pydicom
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid
from pydicom.valuerep import validate_value

from web.clinical.models import Analysis, Image

BANNER = "AI result - not for diagnosis"
MANUFACTURER = "RadTriage"
# Stable series numbers, so the results sort after the modality's own series in a viewer.
SC_SERIES_NUMBER = 9901
SR_SERIES_NUMBER = 9902
# One description per series (a series-level attribute): the condition is said per instance.
SR_SERIES_DESCRIPTION = "AI results (not for diagnosis)"
SC_SERIES_DESCRIPTION = "AI heat maps (not for diagnosis)"

TYPE_2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "AccessionNumber",
)


def reference_dataset(image: Image) -> tuple[Dataset, list[str]]:
    """The source's header (patient, study, series, instance) and what had to be repaired in
    it: read from the stored DICOM, or built from the rows for a PNG/JPEG upload (its instance
    UID is the one it was filed under). A value invalid for its VR is never copied into what
    RadTriage sends: it is repaired where its meaning is plain, else dropped, with a note."""
    if image.format == Image.Format.DICOM:
        with image.file.open("rb") as handle:
            header: Dataset = pydicom.dcmread(handle, stop_before_pixels=True)
        notes = header_repair(header)
        for keyword in TYPE_2_COPIED:  # present, if empty, in what the results copy
            if keyword not in header:
                setattr(header, keyword, "")
        return header, notes
    study = image.study
    patient = study.patient
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = image.sop_instance_uid
    ds.SeriesInstanceUID = image.series_instance_uid or stable_uid("series", image.sop_instance_uid)
    ds.StudyInstanceUID = study.study_instance_uid
    ds.StudyID = ""
    ds.StudyDate = study.study_date.strftime("%Y%m%d") if study.study_date else ""
    ds.StudyTime = ""
    ds.AccessionNumber = study.accession_number
    ds.ReferringPhysicianName = ""
    ds.PatientID = patient.patient_id
    ds.PatientName = patient.name
    ds.PatientBirthDate = patient.birth_date.strftime("%Y%m%d") if patient.birth_date else ""
    ds.PatientSex = patient.sex
    ds.Modality = study.modality or "OT"
    return ds, []


def header_repair(header: Dataset) -> list[str]:
    """Repair or drop the top-level values invalid for their VR (a modality's "81" for
    Patient's Age, a date with slashes); returns one note per change, naming the attribute."""
    notes = []
    for element in list(header):
        if element.VR in ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN") or element.value in (None, ""):
            continue
        values = element.value if element.VM > 1 else [element.value]
        if all(_valid(element.VR, value) for value in values):
            continue
        name = element.keyword or str(element.tag)
        if element.VR == "AS" and re.fullmatch(r"\s*\d{1,3}\s*", str(element.value)):
            element.value = f"{int(str(element.value)):03d}Y"
            notes.append(f"{name} in the source was not a valid DICOM age; sent as {element.value}.")
        elif element.keyword in TYPE_2_COPIED:
            element.value = ""
            notes.append(f"{name} in the source was invalid for its type ({element.VR}); sent empty.")
        else:
            del header[element.tag]
            notes.append(f"{name} in the source was invalid for its type ({element.VR}); not copied.")
    return notes


def _valid(vr: str, value: object) -> bool:
    try:
        validate_value(vr, value, pydicom_config.RAISE)
    except (ValueError, TypeError):
        return False
    return True


def stable_uid(*parts: object) -> str:
    return str(generate_uid(entropy_srcs=["radtriage", *map(str, parts)]))


def sr_uids(image: Image, analyses: Sequence[Analysis]) -> tuple[str, str]:
    """(series, instance) UIDs of the image's SR reporting these current results: the same
    results give the same instance, so a PACS or a DICOMweb client replaces, never duplicates."""
    versions = [f"{a.pk}:{a.finished_at}" for a in sorted(analyses, key=lambda a: a.condition)]
    return stable_uid("sr-series", image.sop_instance_uid), stable_uid(
        "sr", image.sop_instance_uid, *versions
    )


def sc_uids(analysis: Analysis) -> tuple[str, str]:
    """(series, instance) UIDs of an analysis's heat-map secondary capture."""
    return (
        stable_uid("sc-series", analysis.image.sop_instance_uid),
        stable_uid("sc", analysis.pk, analysis.model_sha256, analysis.finished_at),
    )


class ResultNotReady(Exception):
    """The analysis has no result to render yet (`str()` says why)."""
