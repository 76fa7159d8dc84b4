"""The one upload path (web.clinical.services.images_upload_many; image_upload is it with one
file): what the merge of the single and batch paths made possible, against PostgreSQL."""

from __future__ import annotations

import pytest

from tests.web.fixtures import media_files, png_bytes
from web.clinical.ingest.conflicts import UploadConflictError
from web.clinical.ingest.parts import UploadFields, UploadRejected
from web.clinical.ingest.uploads import image_upload, images_upload_many
from web.clinical.models import Image, Patient, Study


def test_each_png_of_a_batch_can_carry_its_own_patient(db) -> None:
    files = [("a.png", png_bytes(seed=1)), ("b.png", png_bytes(seed=2))]
    fields = [
        UploadFields(patient_id="MRN-PER-1", patient_name="One^Ann", body_part="CHEST"),
        UploadFields(patient_id="MRN-PER-2", patient_name="Two^Bob", body_part="CHEST"),
    ]

    items = images_upload_many(files=files, fields=fields, conditions=[])

    assert [item.status_code for item in items] == [201, 201]
    owners = [item.result.image.study.patient.patient_id for item in items]
    assert owners == ["MRN-PER-1", "MRN-PER-2"]
    assert Patient.objects.get(patient_id="MRN-PER-2").name == "Two^Bob"


def test_pngs_with_one_accession_number_join_one_study_and_without_one_get_their_own(db) -> None:
    same_accession = UploadFields(patient_id="MRN-ACC", accession_number="ACC-9", body_part="CHEST")
    items = images_upload_many(
        files=[("a.png", png_bytes(seed=3)), ("b.png", png_bytes(seed=4))],
        fields=same_accession,
        conditions=[],
    )
    later = image_upload(data=png_bytes(seed=5), filename="c.png", fields=same_accession, conditions=[])
    loose = images_upload_many(
        files=[("d.png", png_bytes(seed=6)), ("e.png", png_bytes(seed=7))],
        fields=UploadFields(patient_id="MRN-ACC", body_part="CHEST"),
        conditions=[],
    )

    joined = {item.result.image.study_id for item in items} | {later.image.study_id}
    assert len(joined) == 1 and Study.objects.get(pk=joined.pop()).images.count() == 3
    assert loose[0].result.image.study_id != loose[1].result.image.study_id


def test_a_single_upload_raises_the_refusal_the_batch_reports(db) -> None:
    image_upload(
        data=png_bytes(seed=8), filename="a.png", fields=UploadFields(patient_id="MRN-X"), conditions=[]
    )

    with pytest.raises(UploadConflictError) as clash:
        image_upload(
            data=png_bytes(seed=8), filename="a.png", fields=UploadFields(patient_id="MRN-Y"), conditions=[]
        )
    with pytest.raises(UploadRejected, match="not a valid DICOM UID"):
        image_upload(
            data=png_bytes(seed=9),
            filename="b.png",
            fields=UploadFields(patient_id="MRN-X", study_instance_uid="not-a-uid"),
            conditions=[],
        )

    assert clash.value.status_code == 409 and clash.value.conflict.pk
    assert Image.objects.count() == 1 and not Patient.objects.filter(patient_id="MRN-Y").exists()
    stored = sorted(p.parent.parent.name for p in media_files() if p.suffix == ".png")
    assert stored == ["images", "quarantine"]  # the clash is kept for review, apart


def test_the_same_file_twice_in_one_batch_is_stored_once(db) -> None:
    data = png_bytes(seed=10)
    fields = UploadFields(patient_id="MRN-TWICE", body_part="CHEST")

    items = images_upload_many(files=[("a.png", data), ("again.png", data)], fields=fields, conditions=[])

    assert [item.status_code for item in items] == [201, 200]
    assert items[1].result.image.pk == items[0].result.image.pk and not items[1].result.created
