"""What a study holds as DICOM instances, as DICOMweb shows it: the stored DICOM images
(byte-faithful), and the AI results as their own series (one Comprehensive SR per image with
results, one heat-map secondary capture per current result), with the stable UIDs the PACS
send uses, so a result reached both ways is the same instance.

PNG and JPEG uploads are not DICOM instances: their AI results are listed (referencing the
UID the image was filed under), the images themselves are not.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage

from web.clinical.analysis.findings import current_results
from web.clinical.dicom.reference import (
    SC_SERIES_DESCRIPTION,
    SC_SERIES_NUMBER,
    SR_SERIES_DESCRIPTION,
    SR_SERIES_NUMBER,
    sc_uids,
    sr_uids,
)
from web.clinical.models import Analysis, Image, Study


@dataclass(frozen=True)
class Instance:
    """One instance of a study as DICOMweb lists and retrieves it."""

    kind: str  # "image" (a stored DICOM file), "sr" or "sc" (AI results, made on request)
    image: Image
    series_uid: str
    sop_uid: str
    analysis: Analysis | None = None

    @property
    def study(self) -> Study:
        return self.image.study

    @property
    def header(self) -> Dataset:
        """The stored file's header (an image), or the attributes a result instance has."""
        if self.kind == "image":
            return _stored_header(self.image.pk, self.image.sha256, self.image.file.name)
        ds = Dataset()
        if self.kind == "sr":
            ds.SOPClassUID, ds.Modality = ComprehensiveSRStorage, "SR"
            ds.SeriesNumber, ds.SeriesDescription = SR_SERIES_NUMBER, SR_SERIES_DESCRIPTION
        else:
            ds.SOPClassUID, ds.Modality = SecondaryCaptureImageStorage, "OT"
            ds.SeriesNumber, ds.SeriesDescription = SC_SERIES_NUMBER, SC_SERIES_DESCRIPTION
        ds.InstanceNumber = 1  # as made (each result is the one instance it is in what is sent)
        return ds

    def attributes(self) -> Dataset:
        """Series and instance attributes for a query answer (no patient or study ones)."""
        header, ds = self.header, Dataset()
        for keyword in ("SOPClassUID", "Modality", "SeriesNumber", "SeriesDescription", "InstanceNumber"):
            if keyword in header and header[keyword].value not in (None, ""):
                setattr(ds, keyword, header[keyword].value)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = self.series_uid, self.sop_uid
        if self.kind != "sr":
            ds.Rows, ds.Columns = self.image.height, self.image.width
        return ds


def study_instances(study: Study) -> list[Instance]:
    """Every instance of the study: its DICOM images, then each image's AI result series."""
    images = list(
        study.images.select_related("study__patient")
        .prefetch_related("analyses")
        .order_by("created_at", "pk")
    )
    out: list[Instance] = []
    for image in images:
        if image.format == Image.Format.DICOM:
            out.append(Instance("image", image, image.series_instance_uid, image.sop_instance_uid))
    for image in images:
        out.extend(result_instances(image, image.analyses.all()))
    return out


def result_instances(image: Image, analyses: Iterable[Analysis]) -> list[Instance]:
    """The image's AI results as instances: the SR of its current results, and the heat map
    of each current result that has one (what the PACS send sends, no more)."""
    current = current_results(a for a in analyses if a.state == Analysis.State.SUCCEEDED)
    if not current:
        return []
    for analysis in current:
        analysis.image = image  # already loaded: no query per result for its UIDs
    series, sop = sr_uids(image, current)
    out = [Instance("sr", image, series, sop)]
    for analysis in sorted(current, key=lambda a: a.condition):
        if analysis.heatmap_raw:
            series, sop = sc_uids(analysis)
            out.append(Instance("sc", image, series, sop, analysis))
    return out


def instance_bytes(instance: Instance) -> bytes:
    """The instance as a DICOM file (Part 10): a stored image exactly as stored; an AI result
    made now from the current results (the same results give the same instance UID)."""
    if instance.kind == "image":
        with instance.image.file.open("rb") as handle:
            return handle.read()
    import io

    dataset = _result_dataset(instance)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def instance_dataset(instance: Instance, *, pixels: bool = False) -> Dataset:
    """The instance's data set (without pixel data unless asked), for metadata answers."""
    if instance.kind == "image":
        if not pixels:
            return instance.header
        with instance.image.file.open("rb") as handle:
            return pydicom.dcmread(handle)
    dataset = _result_dataset(instance)
    if not pixels and "PixelData" in dataset:
        del dataset.PixelData
    return dataset


def _result_dataset(instance: Instance) -> Dataset:
    # highdicom (0.3 s to import) only where a result is made.
    if instance.kind == "sr":
        from web.clinical.reporting.dicom_sr import image_structured_report

        return image_structured_report(image=instance.image)
    from web.clinical.reporting.dicom_sc import analysis_secondary_capture

    assert instance.analysis is not None
    return analysis_secondary_capture(analysis=instance.analysis)


@functools.lru_cache(maxsize=1024)
def _stored_header(image_id: int, sha256: str, name: str) -> Dataset:
    # Keyed by the file's checksum too: a stored file never changes under its row.
    image = Image(pk=image_id, sha256=sha256)
    image.file.name = name
    with image.file.open("rb") as handle:
        header: Dataset = pydicom.dcmread(handle, stop_before_pixels=True)
    return header


def instance_attributes_for(instance: Instance, keywords: Iterable[str]) -> dict[str, Any]:
    """Extra attributes a query asked for (includefield) that the instance's header holds."""
    header = instance.header
    return {k: header[k].value for k in keywords if k in header and k != "PixelData"}
