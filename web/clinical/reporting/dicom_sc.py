"""The heat-map overlay as a DICOM Secondary Capture, with the banner burned into its pixels."""

from __future__ import annotations

import cv2
import highdicom as hd
import numpy as np
from django.conf import settings
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian

from web.clinical.dicom.reference import (
    BANNER,
    MANUFACTURER,
    SC_SERIES_DESCRIPTION,
    SC_SERIES_NUMBER,
    ResultNotReady,
    reference_dataset,
    sc_uids,
)
from web.clinical.models import Analysis


def analysis_secondary_capture(*, analysis: Analysis) -> Dataset:
    """RGB Secondary Capture: the banner above the X-ray with its Grad-CAM overlay, in the
    source's study and referencing the source instance (SourceImageSequence)."""
    from core.imaging import load_xray
    from core.overlay import render_overlay
    from web.clinical.viewer import OVERLAY_ALPHA, analysis_heatmap_raw

    if analysis.state != Analysis.State.SUCCEEDED or not analysis.heatmap_raw:
        raise ResultNotReady(f"Analysis {analysis.pk} has no heat map (state: {analysis.state}).")
    image = analysis.image
    with image.file.open("rb") as handle:
        xray = load_xray(handle.read(), max_pixels=settings.RADTRIAGE_MAX_PIXELS, read_metadata=False)
    overlay = render_overlay(xray.pixels, analysis_heatmap_raw(analysis=analysis), alpha=OVERLAY_ALPHA)
    pixels = with_banner(overlay, f"{BANNER} | {analysis.condition} p={analysis.probability:.2f}")
    ref, repairs = reference_dataset(image)
    series_uid, sop_uid = sc_uids(analysis)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        patient_orientation=("L", "F"),  # replaced below by the source's own (or none)
        series_instance_uid=series_uid,
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    orientation = ref.get("PatientOrientation")
    sc.PatientOrientation = list(orientation) if orientation and len(orientation) == 2 else []
    sc.BurnedInAnnotation = "YES"
    sc.SeriesDescription = SC_SERIES_DESCRIPTION
    sc.ImageComments = " ".join([f"{BANNER}. {analysis.condition}, model {analysis.model_id}.", *repairs])
    # General Series' Laterality (type 2C): the source's side where it states one, else empty.
    side = ref.get("Laterality") or ref.get("ImageLaterality") or ""
    sc.Laterality = side if side in ("R", "L") else ""
    sc.DerivationDescription = f"Grad-CAM heat map of {analysis.model_id} over the source image"[:1024]
    source = Dataset()
    source.ReferencedSOPClassUID = ref.SOPClassUID
    source.ReferencedSOPInstanceUID = ref.SOPInstanceUID
    sc.SourceImageSequence = DicomSequence([source])
    return sc


def with_banner(rgb: np.ndarray, text: str) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> (H + h, W, 3): a black strip above the X-ray (which stays
    uncovered) with the text in solid white, wrapped to the width and never too small to read."""
    width = rgb.shape[1]
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = float(np.clip(width / 900, 0.4, 2.0))
    thickness = max(1, round(2 * scale))
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and cv2.getTextSize(candidate, font, scale, thickness)[0][0] <= width - 8:
            lines[-1] = candidate
        else:
            lines.append(word)
    (_, text_h), baseline = cv2.getTextSize("Ag", font, scale, thickness)
    step = text_h + baseline + 4
    banner = np.zeros((step * len(lines) + 8, width, 3), np.uint8)
    for row, line in enumerate(lines):
        origin = (4, 4 + text_h + row * step)
        cv2.putText(banner, line, origin, font, scale, (255, 255, 255), thickness, cv2.LINE_8)
    return np.ascontiguousarray(np.vstack([banner, rgb]))
