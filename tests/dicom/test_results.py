"""AI results as DICOM, downloaded from the API and read back with pydicom, highdicom and
dcmtk's dsrdump: a Comprehensive SR per image and a heat-map Secondary Capture per analysis."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage

from tests.dicom.conftest import analysed_image, dcmtk
from tests.web.fixtures import dicom_bytes
from web.clinical.models import AuditEvent


def test_the_sr_lists_each_condition_with_probability_threshold_result_and_model(
    radiologist_api, live_worker, tmp_path
) -> None:
    image = analysed_image(radiologist_api, dicom_bytes(patient_id="MRN-SR", accession="ACC-SR", seed=5))
    pneumonia = image.analyses.get(condition="pneumonia")
    cardiomegaly = image.analyses.get(condition="cardiomegaly")
    assert pneumonia.state == cardiomegaly.state == "succeeded"

    response = radiologist_api.get(f"/api/images/{image.pk}/dicom-sr/")
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/dicom"
    path = tmp_path / "sr.dcm"
    path.write_bytes(response.content)

    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == ComprehensiveSRStorage and ds.Modality == "SR"
    assert ds.StudyInstanceUID == image.study.study_instance_uid and ds.PatientID == "MRN-SR"
    assert ds.AccessionNumber == "ACC-SR" and ds.VerificationFlag == "UNVERIFIED"
    sr = hd.sr.ComprehensiveSR.from_dataset(ds)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == image.sop_instance_uid

    findings = {}
    for finding in ds.ContentSequence[1:]:
        items = {item.ConceptNameCodeSequence[0].CodeMeaning: item for item in finding.ContentSequence}
        findings[items["Condition"].TextValue] = items
    assert set(findings) == {"Pneumonia", "Cardiomegaly"}
    found = findings["Pneumonia"]
    probability = float(found["AI probability"].MeasuredValueSequence[0].NumericValue)
    assert abs(probability - pneumonia.probability) < 1e-4
    assert float(found["Decision threshold"].MeasuredValueSequence[0].NumericValue) == pneumonia.threshold
    assert found["Algorithm Name"].TextValue == "pneumonia-tiny-test"
    words = found["AI result"].TextValue
    assert words.startswith(("positive", "negative", "not applicable", "experimental"))
    assert found["Source of Measurement"].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        image.sop_instance_uid
    )
    # The model without an artifact ran its flagged placeholder: the SR says so.
    assert findings["Cardiomegaly"]["AI result"].TextValue.startswith("placeholder")

    # The viewer offers both downloads on the study page.
    page = radiologist_api.get(f"/studies/{image.study_id}/").content.decode()
    assert f"/api/images/{image.pk}/dicom-sr/" in page and f"/api/analyses/{pneumonia.pk}/dicom-sc/" in page

    dump = dcmtk("dsrdump", str(path))
    assert dump.returncode == 0, dump.stderr
    assert "Comprehensive SR" in dump.stdout and "pneumonia-tiny-test" in dump.stdout
    assert "AI result - not for diagnosis" in dump.stdout
    assert AuditEvent.objects.filter(action="dicom_sr.download", actor_label="dr.grey").count() == 1


def test_the_secondary_capture_is_the_overlay_with_a_burned_in_banner_in_the_same_study(
    radiologist_api, live_worker
) -> None:
    image = analysed_image(radiologist_api, dicom_bytes(patient_id="MRN-SC", size=128, seed=6))
    analysis = image.analyses.get(condition="pneumonia")

    response = radiologist_api.get(f"/api/analyses/{analysis.pk}/dicom-sc/")
    assert response.status_code == 200, response.content
    ds = pydicom.dcmread(io.BytesIO(response.content))
    assert ds.SOPClassUID == SecondaryCaptureImageStorage
    assert ds.StudyInstanceUID == image.study.study_instance_uid and ds.PatientID == "MRN-SC"
    assert ds.SeriesInstanceUID != image.series_instance_uid
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == image.sop_instance_uid
    assert ds.BurnedInAnnotation == "YES" and "not for diagnosis" in ds.ImageComments
    pixels = ds.pixel_array
    assert ds.PhotometricInterpretation == "RGB" and pixels.shape[1:] == (128, 3)
    banner = pixels[: pixels.shape[0] - 128]
    assert banner.shape[0] >= 8
    assert (banner == 255).all(axis=2).any()  # white lettering on the black strip
    assert (banner == 0).all(axis=2).mean() > 0.5
    # Below the banner: the X-ray in colour (the heat map), not grey.
    body = pixels[-128:].astype(np.int16)
    assert np.abs(body[..., 0] - body[..., 2]).mean() > 5
    # Downloading again gives the same instance (a PACS replaces, never duplicates).
    again = pydicom.dcmread(io.BytesIO(radiologist_api.get(f"/api/analyses/{analysis.pk}/dicom-sc/").content))
    assert again.SOPInstanceUID == ds.SOPInstanceUID


def test_results_are_for_people_who_may_see_studies(
    outsider_api, radiologist_api, private_redis, broker_switch
) -> None:
    from tests.web.fixtures import upload

    # Its job goes to a Redis no worker reads: no worker of another test runs it, holding its
    # rows, while the database is reset after the test.
    broker_switch(f"redis://127.0.0.1:{private_redis[1]}/0")
    response = upload(radiologist_api, dicom_bytes(patient_id="MRN-PRIV"))
    image_id = response.json()["image"]["id"]
    analysis_id = response.json()["image"]["analyses"][0]["id"]
    assert outsider_api.get(f"/api/images/{image_id}/dicom-sr/").status_code == 403
    assert outsider_api.get(f"/api/analyses/{analysis_id}/dicom-sc/").status_code == 403
    # Not analysed yet: a 404 that says so, not an empty report.
    pending = radiologist_api.get(f"/api/images/{image_id}/dicom-sr/")
    assert pending.status_code == 404 and "no finished analysis" in pending.content.decode()


def test_the_sr_words_never_present_a_placeholder_or_out_of_population_result_as_a_finding() -> None:
    from web.clinical.models import Analysis
    from web.clinical.reporting.dicom_sr import result_words

    def words(**flags) -> str:
        return result_words(Analysis(**{"state": "succeeded", "probability": 0.9, "positive": True, **flags}))

    assert words() == "positive"
    assert words(positive=False) == "negative"
    assert words(is_placeholder=True, placeholder_reason="no model").startswith("placeholder")
    assert words(applicable=False, not_applicable_reason="a child's film").startswith("not applicable")
    assert words(experimental=True, experimental_reason="trial").startswith("experimental model, positive")
