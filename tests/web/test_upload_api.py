"""Uploads through the REST API, against PostgreSQL and the Redis broker (no worker needed)."""

from __future__ import annotations

import redis
from django.conf import settings

from tests.web.fixtures import dicom_bytes, media_files, png_bytes, upload
from web.clinical.models import Analysis, AuditEvent, Image, Patient, Study


def queued_messages(url: str, queue: str) -> int:
    return int(redis.Redis.from_url(url).llen(f"{settings.RADTRIAGE_NAMESPACE}.{queue}"))


def test_a_dicom_upload_files_patient_and_study_from_its_header_and_enqueues_jobs(
    api, transactional_db, private_redis, broker_switch
) -> None:
    # A broker no worker listens to, so the queued jobs can be counted.
    url = f"redis://127.0.0.1:{private_redis[1]}/0"
    broker_switch(url)
    response = upload(api, dicom_bytes(patient_id="MRN-42", patient_name="Doe^Jane", accession="ACC-42"))

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["created"] is True
    patient = Patient.objects.get(patient_id="MRN-42")
    assert patient.display_name == "Jane Doe" and patient.sex == "F"
    study = Study.objects.get(accession_number="ACC-42")
    assert study.patient == patient and study.body_part == "CHEST"
    assert study.status == Study.Status.ANALYSING
    image = Image.objects.get()
    assert image.format == "dicom" and image.dicom_header["PatientID"] == "MRN-42"
    assert image.size_bytes == len(image.file.read()) and len(image.sha256) == 64
    assert image.thumbnail.name
    # "all that apply to this body part": both chest conditions, queued for the worker.
    conditions = sorted(a["condition"] for a in body["image"]["analyses"])
    assert conditions == ["cardiomegaly", "pneumonia"]
    assert set(Analysis.objects.values_list("state", flat=True)) == {"queued"}
    assert queued_messages(url, "interactive") == 2
    assert AuditEvent.objects.filter(action="image.upload", patient=patient, actor_label="dr.house").exists()


def test_the_same_dicom_uploaded_twice_is_recognised_not_duplicated(api, db) -> None:
    data = dicom_bytes(patient_id="MRN-7")
    first = upload(api, data)
    again = upload(api, data)

    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["created"] is False
    assert again.json()["image"]["id"] == first.json()["image"]["id"]
    assert Image.objects.count() == 1 and Analysis.objects.count() == 2


def test_a_re_exported_dicom_with_the_same_sop_instance_uid_is_not_duplicated(api, db) -> None:
    # Same instance, same pixels, other bytes (a PACS re-export changed a header field).
    upload(api, dicom_bytes(sop_uid="1.2.826.0.1.3680043.8.498.1", seed=1, accession="A-1"))
    again = upload(api, dicom_bytes(sop_uid="1.2.826.0.1.3680043.8.498.1", seed=1, accession="A-1-REEXPORT"))

    assert again.status_code == 200 and again.json()["created"] is False
    assert Image.objects.count() == 1


def test_a_second_image_of_the_same_study_joins_the_existing_patient_and_study(api, db) -> None:
    upload(api, dicom_bytes(patient_id="MRN-9", study_uid="1.2.3.4.9", seed=1))
    upload(api, dicom_bytes(patient_id="MRN-9", study_uid="1.2.3.4.9", seed=2))

    assert Patient.objects.count() == 1 and Study.objects.count() == 1
    assert Image.objects.count() == 2


def test_a_png_upload_takes_patient_and_study_from_the_form(api, db) -> None:
    response = upload(
        api,
        png_bytes(),
        "knee.png",
        patient_id="MRN-PNG",
        patient_name="Roe^Rick",
        body_part="knee",
        priority="urgent",
        accession_number="A-PNG",
        queue="batch",
    )

    assert response.status_code == 201, response.content
    study = Study.objects.get(accession_number="A-PNG")
    assert study.patient.patient_id == "MRN-PNG" and study.body_part == "KNEE"
    assert study.priority == Study.Priority.URGENT
    assert sorted(Analysis.objects.values_list("condition", flat=True)) == [
        "fracture",
        "knee_osteoarthritis",
        "knee_osteoporosis",
    ]
    assert set(Analysis.objects.values_list("queue", flat=True)) == {"batch"}


def test_the_uploader_can_choose_which_conditions_run(api, db) -> None:
    response = upload(api, dicom_bytes(), conditions="pneumonia")

    assert response.status_code == 201
    assert list(Analysis.objects.values_list("condition", flat=True)) == ["pneumonia"]


def test_a_png_without_a_patient_id_is_filed_as_unidentified_not_under_its_name(api, db) -> None:
    response = upload(api, png_bytes(), "chest.png", body_part="chest")

    assert response.status_code == 201
    [patient] = Patient.objects.all()
    assert patient.patient_id.startswith("UNIDENTIFIED-") and patient.name == "(unidentified)"
    assert any(patient.patient_id in w for w in response.json()["warnings"])


def test_a_truncated_dicom_is_refused_with_the_decoder_message(api, db) -> None:
    data = dicom_bytes()
    response = upload(api, data[: len(data) // 2])

    assert response.status_code == 400
    assert "truncated or corrupt" in response.json()["error"]
    assert not Study.objects.exists() and media_files() == []


def test_a_file_that_is_not_an_image_is_refused(api, db) -> None:
    response = upload(api, b"%PDF-1.7 definitely not an x-ray", "report.pdf", patient_id="X")

    assert response.status_code == 400
    assert "DICOM (.dcm), PNG or JPEG" in response.json()["error"]


def test_a_ct_slice_is_refused_as_not_a_radiograph(api, db) -> None:
    response = upload(api, dicom_bytes(modality="CT"))

    assert response.status_code == 400
    assert "not an X-ray radiograph" in response.json()["error"]


def test_an_unknown_condition_is_refused(api, db) -> None:
    response = upload(api, dicom_bytes(), conditions="pneumonia,gout")

    assert response.status_code == 400
    assert "gout" in response.json()["error"]
    assert not Image.objects.exists()


def test_a_chest_condition_on_a_knee_dicom_is_refused(api, db) -> None:
    response = upload(api, dicom_bytes(body_part="KNEE"), conditions="pneumonia")

    assert response.status_code == 400
    assert "KNEE" in response.json()["error"]
    assert not Image.objects.exists() and media_files() == []


def test_a_study_uid_that_belongs_to_another_patient_is_a_conflict(api, db) -> None:
    upload(api, dicom_bytes(patient_id="MRN-A", study_uid="1.2.3.77", seed=1))
    response = upload(api, dicom_bytes(patient_id="MRN-B", study_uid="1.2.3.77", seed=2))

    assert response.status_code == 409
    assert "belongs to another patient" in response.json()["error"]
    assert Image.objects.count() == 1 and not Patient.objects.filter(patient_id="MRN-B").exists()
    assert len([p for p in media_files() if p.suffix == ".dcm"]) == 1


def test_a_body_part_with_no_model_is_stored_without_analysis_and_says_so(api, db) -> None:
    response = upload(api, dicom_bytes(body_part="SKULL"))

    assert response.status_code == 201
    assert "No RadTriage model applies" in response.json()["warnings"][0]
    assert Image.objects.count() == 1 and not Analysis.objects.exists()


def test_a_file_over_the_size_limit_is_refused_with_413(api, db, settings) -> None:
    settings.RADTRIAGE_MAX_UPLOAD_BYTES = 10_000
    response = upload(api, dicom_bytes())

    assert response.status_code == 413
    assert "largest accepted is 10,000 bytes" in response.json()["error"]
    assert not Image.objects.exists() and media_files() == []


def test_an_upload_without_a_file_says_so(api, db) -> None:
    response = api.post("/api/uploads/", {"patient_id": "X"}, format="multipart")

    assert response.status_code == 400
    assert response.json()["error"] == "file: No file was submitted."


def test_the_thumbnail_is_a_small_jpeg_of_the_xray(api, db) -> None:
    import io

    import numpy as np
    from PIL import Image as PILImage

    response = upload(api, dicom_bytes(patient_id="MRN-THUMB", size=512, seed=5))
    image_id = response.json()["image"]["id"]
    thumbnail = api.get(f"/api/images/{image_id}/thumbnail/")

    assert thumbnail.status_code == 200 and thumbnail["Content-Type"] == "image/jpeg"
    picture = PILImage.open(io.BytesIO(b"".join(thumbnail.streaming_content)))
    assert picture.format == "JPEG" and picture.size == (256, 256) and picture.mode == "L"
    # The X-ray itself, shrunk: its mean brightness survives (a blank or wrong image would not).
    original = Image.objects.get(pk=image_id)
    from core.imaging import load_xray

    full = load_xray(original.file.read()).pixels
    assert abs(float(np.asarray(picture).mean()) - float(full.mean())) < 3


def test_re_uploading_an_image_whose_jobs_were_lost_sends_them_again_and_adds_missing_ones(
    api, transactional_db, private_redis, broker_switch
) -> None:
    import datetime as dt

    url = f"redis://127.0.0.1:{private_redis[1]}/0"
    broker_switch(url)
    data = dicom_bytes(patient_id="MRN-LOST")
    first = upload(api, data, conditions="pneumonia")
    assert first.status_code == 201 and queued_messages(url, "interactive") == 1
    # The broker lost the message (or the web process died before sending it) a while ago.
    redis.Redis.from_url(url).flushdb()
    Analysis.objects.update(enqueued_at=Analysis.objects.get().enqueued_at - dt.timedelta(minutes=5))

    again = upload(api, data)  # all conditions for its body part this time

    assert again.status_code == 200 and again.json()["created"] is False
    assert sorted(Analysis.objects.values_list("condition", flat=True)) == ["cardiomegaly", "pneumonia"]
    assert queued_messages(url, "interactive") == 2  # the lost one again, and the new one
    assert any("sent to the workers again" in w for w in again.json()["warnings"])
