"""The de-identified research export: studies received over DICOM and the browser, zipped with
the basic profile applied, for admins only, audited once."""

from __future__ import annotations

import io
import zipfile

import pydicom
from pydicom.uid import generate_uid

from tests.web.fixtures import dicom_bytes, png_bytes, upload
from web.clinical.models import AuditEvent, Study

SOURCE_UID = generate_uid()


def identified(**kwargs) -> bytes:
    """A radiograph carrying the identifiers a hospital's would: names, dates, institution,
    a private tag, and a reference to another instance."""
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(**kwargs)))
    ds.InstitutionName = "St. Elsewhere Hospital"
    ds.ReferringPhysicianName = "Kildare^James"
    ds.OperatorsName = "Tech^Tina"
    ds.PatientAddress = "1 Main Street"
    ds.OtherPatientIDs = "OLD-" + ds.PatientID
    ds.StudyTime = "101500"
    ds.private_block(0x0011, "ACME 1.0", create=True).add_new(0x01, "LO", str(ds.PatientName))
    ref = pydicom.Dataset()
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = SOURCE_UID
    ds.SourceImageSequence = [ref]
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def members(response) -> tuple[dict[str, pydicom.Dataset], dict, bytes]:
    body = b"".join(response.streaming_content)
    archive = zipfile.ZipFile(io.BytesIO(body))
    files = {
        n: pydicom.dcmread(io.BytesIO(archive.read(n))) for n in archive.namelist() if n.endswith(".dcm")
    }
    import json

    return files, json.loads(archive.read("manifest.json")), body


def test_a_batch_export_holds_no_identifiers_and_maps_uids_consistently(admin_api) -> None:
    study_uid = generate_uid()
    for seed in (1, 2):
        sent = upload(
            admin_api,
            identified(
                patient_id="MRN-555",
                patient_name="Smith^Anna",
                birth_date="19610214",
                study_uid=study_uid,
                accession="ACC-555",
                seed=seed,
            ),
        )
        assert sent.status_code == 201, sent.content
    other_uid = generate_uid()
    upload(admin_api, identified(patient_id="MRN-777", patient_name="Jones^Bob", study_uid=other_uid, seed=3))
    upload(admin_api, png_bytes(), name="photo.png", patient_id="MRN-777", study_instance_uid=other_uid)
    ids = list(Study.objects.order_by("pk").values_list("pk", flat=True))

    response = admin_api.post("/api/exports/deidentified/", {"study_ids": ids}, format="json")
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/zip"
    files, manifest, body = members(response)

    assert len(files) == 3 and manifest["instances"] == 3 and manifest["studies"] == 2
    assert [m["why"].split(":")[0] for m in manifest["not_exported"]] == ["PNG upload"]
    for secret in (
        b"MRN-555",
        b"Smith",
        b"Anna",
        b"19610214",
        b"MRN-777",
        b"Jones",
        b"Elsewhere",
        b"Kildare",
        b"Tina",
        b"Main Street",
        b"ACC-555",
        study_uid.encode(),
        other_uid.encode(),
    ):
        assert secret not in body, secret
    for name, ds in files.items():
        assert ds.PatientName == "" and ds.PatientBirthDate == "" and ds.StudyDate == ""
        assert ds.PatientID.startswith("RT-") and "MRN" not in ds.PatientID
        assert ds.PatientIdentityRemoved == "YES"
        assert "Annex E" in ds.DeidentificationMethod
        assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert "InstitutionName" not in ds and "OperatorsName" not in ds and "OtherPatientIDs" not in ds
        assert not any(elem.tag.is_private for elem in ds)
        assert name == f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # well-known UIDs are kept
        assert ds.pixel_array.shape == (96, 96)
    by_study: dict[str, list[pydicom.Dataset]] = {}
    for ds in files.values():
        by_study.setdefault(ds.StudyInstanceUID, []).append(ds)
    # One study's two images share one new study UID and one pseudonym; the other patient differs.
    assert sorted(len(v) for v in by_study.values()) == [1, 2]
    same_study = next(v for v in by_study.values() if len(v) == 2)
    other = next(v for v in by_study.values() if len(v) == 1)[0]
    assert same_study[0].PatientID == same_study[1].PatientID != other.PatientID
    assert same_study[0].SeriesInstanceUID != same_study[1].SeriesInstanceUID
    # A reference is remapped with the same map: it points where the original pointed.
    refs = {ds.SourceImageSequence[0].ReferencedSOPInstanceUID for ds in same_study}
    assert len(refs) == 1 and refs.pop() not in (SOURCE_UID, "")
    assert SOURCE_UID.encode() not in body
    events = AuditEvent.objects.filter(action="export.deidentified")
    assert events.count() == 1 and events.get().detail["instances"] == 3


def test_a_study_export_is_for_admins_only(
    admin_api, radiologist_api, outsider_api, private_redis, broker_switch
) -> None:
    broker_switch(f"redis://127.0.0.1:{private_redis[1]}/0")  # no worker runs its jobs during the reset
    upload(admin_api, identified(patient_id="MRN-9", study_uid=generate_uid(), seed=4))
    study = Study.objects.get()
    assert radiologist_api.get(f"/api/studies/{study.pk}/deidentified/").status_code == 403
    assert outsider_api.get(f"/api/studies/{study.pk}/deidentified/").status_code == 403
    assert (
        radiologist_api.post(
            "/api/exports/deidentified/", {"study_ids": [study.pk]}, format="json"
        ).status_code
        == 403
    )

    response = admin_api.get(f"/api/studies/{study.pk}/deidentified/")
    assert response.status_code == 200
    files, manifest, body = members(response)
    assert len(files) == 1 and b"MRN-9" not in body
    assert (
        admin_api.post(
            "/api/exports/deidentified/", {"study_ids": [study.pk, 999999]}, format="json"
        ).status_code
        == 400
    )
    assert AuditEvent.objects.filter(action="export.deidentified").count() == 1


def test_a_batch_is_exported_de_identified_in_one_zip(admin_api) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    files = [
        SimpleUploadedFile(
            f"{i}.dcm", identified(patient_id=f"MRN-B{i}", study_uid=generate_uid(), seed=20 + i)
        )
        for i in range(2)
    ]
    created = admin_api.post("/api/batches/", {"files": files, "conditions": ""}, format="multipart")
    assert created.status_code == 201, created.content
    batch_id = created.json()["batch"]

    response = admin_api.post("/api/exports/deidentified/", {"batch_id": batch_id}, format="json")
    both = admin_api.post(
        "/api/exports/deidentified/", {"batch_id": batch_id, "study_ids": [1]}, format="json"
    )
    unknown = admin_api.post("/api/exports/deidentified/", {"batch_id": 999999}, format="json")

    assert response.status_code == 200, response.content
    assert response["Content-Disposition"].endswith(f'batch-{batch_id}-deidentified.zip"')
    files_out, manifest, body = members(response)
    assert len(files_out) == 2 and manifest["studies"] == 2
    assert b"MRN-B0" not in body and b"MRN-B1" not in body
    assert both.status_code == 400 and unknown.status_code == 400
