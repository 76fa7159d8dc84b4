"""De-identified export for research: DICOM PS3.15 Annex E, Basic Application Level
Confidentiality Profile. Identifying attributes are removed (X) or emptied (Z), private and
overlay groups dropped, every instance UID remapped through one map per export (so references
between instances still hold), and the method is recorded in the data set itself.

Exported: the stored DICOM images. Not exported, and listed in manifest.json: PNG/JPEG uploads
(no header to clean, pixels unchecked) and images with burned-in annotation (the basic
profile without the Clean Pixel Data option must not release them).
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import zipfile
from collections.abc import Iterable
from typing import IO, Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian

from web.clinical.models import Image, Study

METHOD = "DICOM PS3.15 Annex E Basic Profile (RadTriage)"  # LO: 64 characters at most
# The basic profile's removals (X) among what radiographs carry, and the Type 2 attributes it
# empties (Z). Dates and times go too (no Retain Longitudinal option).
REMOVE = frozenset(
    [
        "AcquisitionComments",
        "AcquisitionDate",
        "AcquisitionDateTime",
        "AcquisitionTime",
        "AcquisitionDeviceProcessingDescription",
        "ActualHumanPerformersSequence",
        "AdditionalPatientHistory",
        "AdmissionID",
        "AdmittingDiagnosesCodeSequence",
        "AdmittingDiagnosesDescription",
        "Allergies",
        "BranchOfService",
        "CountryOfResidence",
        "CurrentPatientLocation",
        "DerivationDescription",
        "DeviceSerialNumber",
        "DischargeDiagnosisDescription",
        "EthnicGroup",
        "ImageComments",
        "InstanceCreationDate",
        "InstanceCreationTime",
        "InstanceCreatorUID",
        "InstitutionAddress",
        "InstitutionCodeSequence",
        "InstitutionName",
        "InstitutionalDepartmentName",
        "IssuerOfPatientID",
        "LastMenstrualDate",
        "MedicalAlerts",
        "MedicalRecordLocator",
        "MilitaryRank",
        "NameOfPhysiciansReadingStudy",
        "Occupation",
        "OperatorIdentificationSequence",
        "OperatorsName",
        "OtherPatientIDs",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "PatientAddress",
        "PatientAge",
        "PatientBirthName",
        "PatientBirthTime",
        "PatientComments",
        "PatientInsurancePlanCodeSequence",
        "PatientMotherBirthName",
        "PatientReligiousPreference",
        "PatientSize",
        "PatientState",
        "PatientTelephoneNumbers",
        "PatientWeight",
        "PerformedProcedureStepDescription",
        "PerformedProcedureStepEndDate",
        "PerformedProcedureStepID",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "PerformingPhysicianName",
        "PerformingPhysicianIdentificationSequence",
        "PhysiciansOfRecord",
        "PhysiciansOfRecordIdentificationSequence",
        "PregnancyStatus",
        "ProtocolName",
        "ReasonForTheRequestedProcedure",
        "ReferencedPatientSequence",
        "ReferencedStudySequence",
        "ReferringPhysicianAddress",
        "ReferringPhysicianIdentificationSequence",
        "ReferringPhysicianTelephoneNumbers",
        "RegionOfResidence",
        "RequestAttributesSequence",
        "RequestedProcedureDescription",
        "RequestedProcedureID",
        "RequestingPhysician",
        "RequestingService",
        "ResponsibleOrganization",
        "ResponsiblePerson",
        "ScheduledProcedureStepDescription",
        "ScheduledProcedureStepID",
        "SeriesDate",
        "SeriesDescription",
        "SeriesTime",
        "SmokingStatus",
        "SpecialNeeds",
        "StationName",
        "StudyComments",
        "StudyDescription",
        "TextComments",
    ]
)
EMPTY = (
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ContentDate",
    "ContentTime",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
    "ContentCreatorName",
)
DICOM_ROOT = "1.2.840.10008."  # SOP classes, transfer syntaxes, coding schemes: kept as they are


class Export:
    """One export's secret and its consistent replacements (UIDs, patient pseudonyms)."""

    def __init__(self, salt: str | None = None) -> None:
        self._salt = salt or secrets.token_hex(16)

    def _digest(self, kind: str, value: str) -> str:
        return hashlib.sha256(f"{self._salt}|{kind}|{value}".encode()).hexdigest()

    def uid(self, value: str) -> str:
        if not value or value.startswith(DICOM_ROOT):
            return value
        return "2.25." + str(int(self._digest("uid", value)[:30], 16))

    def pseudonym(self, patient_id: str) -> str:
        return "RT-" + self._digest("patient", patient_id)[:12].upper()

    def token(self, kind: str, value: str) -> str:
        """A short name for `value` (an image, a file) that only this export's secret links
        back to it: 16 hex digits."""
        return self._digest(kind, value)[:16]


def burned_in_annotation(ds: Dataset) -> bool:
    """The header says text is burned into the pixels (names, dates): the basic profile, which
    does not clean pixel data, must not release the image."""
    return str(ds.get("BurnedInAnnotation", "")).upper() == "YES"


def dataset_deidentify(ds: Dataset, export: Export) -> Dataset:
    """The data set with the basic profile applied (in place; returned for convenience)."""
    patient_id = str(ds.get("PatientID", ""))
    ds.remove_private_tags()
    ds.walk(lambda d, elem: _clean(d, elem, export))
    for keyword in EMPTY:
        if keyword in ds:
            setattr(ds, keyword, "")
    ds.PatientID = export.pseudonym(patient_id)
    ds.PatientIdentityRemoved = "YES"
    ds.LongitudinalTemporalInformationModified = "REMOVED"
    ds.DeidentificationMethod = METHOD
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "113100", "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = DicomSequence([code])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = getattr(
        getattr(ds, "file_meta", None), "TransferSyntaxUID", ExplicitVRLittleEndian
    )
    ds.file_meta = meta
    return ds


def _clean(ds: Dataset, elem: Any, export: Export) -> None:
    if elem.keyword in REMOVE or 0x6000 <= elem.tag.group <= 0x60FF:  # overlays may hold text
        del ds[elem.tag]
    elif elem.VR == "UI" and elem.value:
        values = elem.value if elem.VM > 1 else [elem.value]
        mapped = [export.uid(str(v)) for v in values]
        elem.value = mapped if elem.VM > 1 else mapped[0]


def studies_export_deidentified(*, studies: Iterable[Study], out: IO[bytes]) -> dict[str, Any]:
    """Write the zip (STUDY/SERIES/INSTANCE.dcm under new UIDs, plus manifest.json) to `out`;
    return the manifest (counts, what was left out and why, never an identifier)."""
    export = Export()
    manifest: dict[str, Any] = {"method": METHOD, "studies": 0, "instances": 0, "not_exported": []}
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for study in studies:
            manifest["studies"] += 1
            for image in study.images.order_by("id"):
                reason = _not_exportable(image)
                with image.file.open("rb") as handle:
                    ds = pydicom.dcmread(handle) if reason is None else None
                if ds is not None and burned_in_annotation(ds):
                    reason = "burned-in annotation (the basic profile does not clean pixels)"
                if ds is None or reason:
                    manifest["not_exported"].append(
                        {"study": export.uid(study.study_instance_uid), "why": reason}
                    )
                    continue
                dataset_deidentify(ds, export)
                name = f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
                buffer = io.BytesIO()  # pydicom seeks while writing: a zip member cannot
                ds.save_as(buffer, enforce_file_format=True)
                archive.writestr(name, buffer.getvalue())
                manifest["instances"] += 1
        archive.writestr("manifest.json", json.dumps(manifest, indent=2))
    return manifest


def _not_exportable(image: Image) -> str | None:
    if image.format != Image.Format.DICOM:
        return f"{image.get_format_display()} upload: no DICOM header to de-identify"
    return None
