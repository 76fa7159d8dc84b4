"""Wrong-patient safety: an upload that matches a stored image by SOPInstanceUID or bytes is a
duplicate only when it is the same patient's image. Anything else is refused with a message,
kept for review, and never answered with (or merged into) another patient's study."""

from __future__ import annotations

from django.core.files.uploadedfile import SimpleUploadedFile

from tests.web.fixtures import dicom_bytes, media_files, png_bytes, upload
from web.clinical.models import AuditEvent, Image, Patient, Study, UploadConflict

SHARED_UID = "1.2.826.0.1.3680043.8.498.777"


def test_a_sop_instance_uid_reused_for_another_patient_is_refused_and_kept_for_review(api, db) -> None:
    first = upload(
        api,
        dicom_bytes(
            patient_id="MRN-A", patient_name="Alpha^Ann", sop_uid=SHARED_UID, study_uid="1.2.3.100", seed=1
        ),
    )
    other_patients_file = dicom_bytes(
        patient_id="MRN-B", patient_name="Beta^Bob", sop_uid=SHARED_UID, study_uid="1.2.3.200", seed=2
    )
    clash = upload(api, other_patients_file)

    assert first.status_code == 201
    assert clash.status_code == 409, clash.content
    body = clash.json()
    assert "different patient" in body["error"] and "MRN-B" in body["error"]
    assert f"#{body['conflict_id']}" in body["error"]
    # Nothing of patient A's comes back, and nothing of B's was filed anywhere.
    assert "study" not in body and "image" not in body and "MRN-A" not in clash.content.decode()
    assert Image.objects.count() == 1
    assert not Patient.objects.filter(patient_id="MRN-B").exists()
    assert Study.objects.get().patient.patient_id == "MRN-A"
    conflict = UploadConflict.objects.get(pk=body["conflict_id"])
    assert conflict.kind == UploadConflict.Kind.SAME_UID_OTHER_PATIENT
    assert conflict.claimed_patient_id == "MRN-B"
    assert conflict.existing_image.study.patient.patient_id == "MRN-A"
    assert conflict.file.read() == other_patients_file
    assert AuditEvent.objects.filter(action="image.upload_conflict", object_id=str(conflict.pk)).exists()


def test_the_same_png_sent_for_another_patient_is_refused_not_answered_with_the_first(api, db) -> None:
    data = png_bytes(seed=5)
    first = upload(api, data, "chest.png", patient_id="MRN-P1", body_part="chest")
    clash = upload(api, data, "chest.png", patient_id="MRN-P2", body_part="chest")

    assert first.status_code == 201
    assert clash.status_code == 409
    assert "already stored for a different patient" in clash.json()["error"]
    assert "MRN-P1" not in clash.content.decode()
    assert Image.objects.count() == 1 and Study.objects.count() == 1
    assert UploadConflict.objects.get().kind == UploadConflict.Kind.SAME_FILE_OTHER_PATIENT


def test_the_same_clash_sent_again_is_one_review_item_with_its_count(api, db) -> None:
    data = png_bytes(seed=6)
    upload(api, data, "a.png", patient_id="MRN-Q1")
    one = upload(api, data, "a.png", patient_id="MRN-Q2")
    files_after_first_clash = len(media_files())
    two = upload(api, data, "a.png", patient_id="MRN-Q2")

    assert one.status_code == two.status_code == 409
    assert one.json()["conflict_id"] == two.json()["conflict_id"]
    assert UploadConflict.objects.get().attempts == 2
    assert len(media_files()) == files_after_first_clash


def test_a_sop_instance_uid_reused_for_other_pixels_of_the_same_patient_is_refused(api, db) -> None:
    upload(api, dicom_bytes(patient_id="MRN-C", sop_uid=SHARED_UID, seed=1))
    clash = upload(api, dicom_bytes(patient_id="MRN-C", sop_uid=SHARED_UID, seed=2))

    assert clash.status_code == 409
    assert "different pixels" in clash.json()["error"]
    assert Image.objects.count() == 1
    assert UploadConflict.objects.get().kind == UploadConflict.Kind.SAME_UID_OTHER_PIXELS


def test_the_same_patients_image_sent_again_is_still_a_duplicate(api, db) -> None:
    data = png_bytes(seed=7)
    upload(api, data, "k.png", patient_id="MRN-D", body_part="knee")
    again = upload(api, data, "k.png", patient_id="MRN-D", body_part="knee")

    assert again.status_code == 200 and again.json()["created"] is False
    assert not UploadConflict.objects.exists()


def test_a_bulk_upload_refuses_the_clashing_file_and_keeps_the_others(api, db) -> None:
    clashing = png_bytes(seed=8)
    upload(api, clashing, "x.png", patient_id="MRN-E1", body_part="chest")
    files = [SimpleUploadedFile("new.png", png_bytes(seed=9)), SimpleUploadedFile("clash.png", clashing)]
    response = api.post(
        "/api/uploads/batch/",
        {"files": files, "patient_id": "MRN-E2", "body_part": "chest"},
        format="multipart",
    )

    assert response.status_code == 201, response.content
    new, clash = response.json()["results"]
    assert new["status"] == "created"
    assert clash["status"] == "rejected" and "different patient" in clash["error"]
    assert Image.objects.filter(study__patient__patient_id="MRN-E2").count() == 1
    assert Image.objects.filter(study__patient__patient_id="MRN-E1").count() == 1
    assert UploadConflict.objects.get().claimed_patient_id == "MRN-E2"
