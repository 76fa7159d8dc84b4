"""The source instance an AI result derives from, as a header-only dataset, and the stable
UIDs of the results (the same analysis always yields the same instance: a re-send replaces)."""

from __future__ import annotations

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

from web.clinical.models import Image

BANNER = "AI result - not for diagnosis"
MANUFACTURER = "RadTriage"
# Stable series numbers, so the results sort after the modality's own series in a viewer.
SC_SERIES_NUMBER = 9901
SR_SERIES_NUMBER = 9902

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


def reference_dataset(image: Image) -> Dataset:
    """The source's header (patient, study, series, instance): read from the stored DICOM, or
    built from the rows for a PNG/JPEG upload (its instance UID is the one it was filed under)."""
    if image.format == Image.Format.DICOM:
        with image.file.open("rb") as handle:
            header: Dataset = pydicom.dcmread(handle, stop_before_pixels=True)
        for keyword in TYPE_2_COPIED:  # present, if empty, in what the results copy
            if keyword not in header:
                setattr(header, keyword, "")
        return header
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
    return ds


def stable_uid(*parts: object) -> str:
    return str(generate_uid(entropy_srcs=["radtriage", *map(str, parts)]))


class ResultNotReady(Exception):
    """The analysis has no result to render yet (`str()` says why)."""
