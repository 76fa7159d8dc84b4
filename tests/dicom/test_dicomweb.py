"""DICOMweb against the web process as `make run` starts it, with a standard client
(`dicomweb-client`, as research pipelines and viewers' back ends use): real radiographs stored
with STOW-RS, found with QIDO-RS and retrieved with WADO-RS unchanged; hostile files refused
with reasons and nothing stored; the AI results listed and retrieved as their own series."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image as PILImage
from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage
from rest_framework.authtoken.models import Token

from tests.dicom.conftest import SHARED_DICOM
from tests.web.fixtures import (
    dicom_bytes,
    free_port,
    png_bytes,
    procfile_service,
    service_env,
    stored_state,
    wait_for,
    web_login_user,
    with_role,
)
from web.clinical.models import Analysis, AuditEvent, Image

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
ROUND_TRIP = ("nih_dx_test1.dcm", "nih_dx_test2.dcm", "RG1_J2KI.dcm")


@pytest.fixture()
def web_url(live_worker: Any, service_logs: Path) -> Iterator[str]:
    """The web process from the Procfile, as `make run` starts it, on a free port."""
    port = free_port()
    env = service_env(RADTRIAGE_HOST="127.0.0.1", RADTRIAGE_PORT=str(port))
    server = procfile_service("web", env, service_logs).start(ready_text="Uvicorn running on", timeout=60)
    yield f"http://127.0.0.1:{port}"
    server.stop()


def token_session(django_user_model: Any, username: str, *roles: str) -> requests.Session:
    user = web_login_user(django_user_model, username, f"pw-{username}-123")
    if roles:
        with_role(user, *roles)
    session = requests.Session()
    session.headers["Authorization"] = f"Token {Token.objects.create(user=user).key}"
    return session


@pytest.fixture()
def clients(web_url: str, django_user_model: Any) -> dict[str, DICOMwebClient]:
    return {
        name: DICOMwebClient(url=f"{web_url}/dicom-web", session=token_session(django_user_model, name, role))
        for name, role in (("tech.ana", "technologist"), ("dr.rossi", "radiologist"))
    }


def stow(
    web_url: str, session: requests.Session, parts: list[bytes], path: str = "studies"
) -> requests.Response:
    boundary = "radtriage-test-boundary"
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n" for part in parts
    )
    body += f"--{boundary}--\r\n".encode()
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return session.post(f"{web_url}/dicom-web/{path}", data=body, headers={"Content-Type": content_type})


def test_real_radiographs_stored_found_and_retrieved_unchanged(clients, web_url: str) -> None:
    tech, rossi = clients["tech.ana"], clients["dr.rossi"]
    originals = [pydicom.dcmread(SHARED_DICOM / name) for name in ROUND_TRIP]

    answer = tech.store_instances([pydicom.dcmread(SHARED_DICOM / name) for name in ROUND_TRIP])

    stored = {item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence}
    assert stored == {str(ds.SOPInstanceUID) for ds in originals}
    assert "FailedSOPSequence" not in answer
    for original in originals:
        [study] = rossi.search_for_studies(search_filters={"StudyInstanceUID": original.StudyInstanceUID})
        found = pydicom.Dataset.from_json(study)
        assert found.PatientID == original.PatientID and found.StudyInstanceUID == original.StudyInstanceUID
        assert original.Modality in found.ModalitiesInStudy
        instances = rossi.search_for_instances(
            study_instance_uid=original.StudyInstanceUID, search_filters={"Modality": original.Modality}
        )
        assert [pydicom.Dataset.from_json(i).SOPInstanceUID for i in instances] == [original.SOPInstanceUID]
        back = rossi.retrieve_instance(
            original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID
        )
        assert back.SOPInstanceUID == original.SOPInstanceUID
        assert back.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID  # as stored
        assert back.PixelData == original.PixelData
        assert np.array_equal(back.pixel_array, original.pixel_array)
    # Storing is an upload like any other: the analyses were queued as for C-STORE.
    assert Analysis.objects.filter(image__sop_instance_uid__in=stored).count() >= 3
    assert AuditEvent.objects.filter(action="dicomweb.query", actor_label="dr.rossi").exists()
    assert AuditEvent.objects.filter(action="dicomweb.retrieve", actor_label="dr.rossi").count() == 3


def test_the_ai_results_are_a_series_of_the_study_that_a_client_lists_and_retrieves(clients) -> None:
    source = pydicom.dcmread(SHARED_DICOM / "nih_dx_test1.dcm")
    clients["tech.ana"].store_instances([source])
    wait_for(
        lambda: (
            Analysis.objects.filter(image__sop_instance_uid=source.SOPInstanceUID).exists()
            and not Analysis.objects.filter(
                image__sop_instance_uid=source.SOPInstanceUID, state__in=["queued", "running"]
            ).exists()
        ),
        timeout=120,
        what="the analyses of the stored instance",
    )
    rossi = clients["dr.rossi"]
    series = [pydicom.Dataset.from_json(s) for s in rossi.search_for_series(source.StudyInstanceUID)]
    by_modality = {str(s.Modality): s for s in series}
    assert set(by_modality) == {"DX", "SR", "OT"}
    assert "not for diagnosis" in by_modality["SR"].SeriesDescription

    [sr_entry] = rossi.search_for_instances(source.StudyInstanceUID, str(by_modality["SR"].SeriesInstanceUID))
    sr_uid = pydicom.Dataset.from_json(sr_entry).SOPInstanceUID
    sr = rossi.retrieve_instance(source.StudyInstanceUID, by_modality["SR"].SeriesInstanceUID, sr_uid)
    assert sr.SOPClassUID == ComprehensiveSRStorage and sr.SOPInstanceUID == sr_uid
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    # The same results give the same instance on every retrieval (a viewer caches it).
    again = rossi.retrieve_instance(source.StudyInstanceUID, by_modality["SR"].SeriesInstanceUID, sr_uid)
    assert again.SOPInstanceUID == sr.SOPInstanceUID

    captures = rossi.retrieve_series(source.StudyInstanceUID, by_modality["OT"].SeriesInstanceUID)
    assert captures and all(c.SOPClassUID == SecondaryCaptureImageStorage for c in captures)
    assert all(c.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID for c in captures)
    assert all(c.BurnedInAnnotation == "YES" for c in captures)

    metadata = rossi.retrieve_study_metadata(source.StudyInstanceUID)
    assert {pydicom.Dataset.from_json(m).SOPInstanceUID for m in metadata} >= {source.SOPInstanceUID, sr_uid}


def test_hostile_files_are_refused_with_reasons_and_nothing_is_stored(clients, web_url: str) -> None:
    tech = clients["tech.ana"]._session
    before = stored_state()
    truncated = (SHARED_DICOM / "nih_dx_test2.dcm").read_bytes()[:3000]
    hostile = [b"not a DICOM file at all", png_bytes(seed=3), truncated]

    answer = stow(web_url, tech, hostile)

    assert answer.status_code == 409, answer.text  # none stored
    assert answer.headers["Content-Type"] == "application/dicom+json"
    failed = pydicom.Dataset.from_json(answer.json()).FailedSOPSequence
    assert [item.FailureReason for item in failed] == [0xC000] * 3
    assert answer.headers["Warning"].count("299 RadTriage") == 3
    assert stored_state() == before

    # One good instance among bad ones: stored; the answer says which failed.
    good = (SHARED_DICOM / "nih_dx_test2.dcm").read_bytes()
    mixed = stow(web_url, tech, [good, b"garbage"])
    assert mixed.status_code == 202
    body = pydicom.Dataset.from_json(mixed.json())
    assert len(body.ReferencedSOPSequence) == 1 and len(body.FailedSOPSequence) == 1
    assert Image.objects.count() == before["images"] + 1

    # Posted to one study, an instance of another is refused (0xA900), not filed elsewhere.
    other = dicom_bytes(patient_id="MRN-OTHER", seed=9)
    wrong = stow(web_url, tech, [other], path="studies/1.2.3.4.5")
    assert wrong.status_code == 409
    assert pydicom.Dataset.from_json(wrong.json()).FailedSOPSequence[0].FailureReason == 0xA900

    # Not multipart/related of application/dicom: 415 with what to send.
    form = tech.post(f"{web_url}/dicom-web/studies", data=b"x", headers={"Content-Type": "application/json"})
    assert form.status_code == 415 and "multipart/related" in form.json()["error"]


def test_qido_matching_keys_paging_and_fields(clients, web_url: str) -> None:
    tech, rossi = clients["tech.ana"], clients["dr.rossi"]
    for n, (name, date) in enumerate((("Novak^Petra", "20240105"), ("Novak^Pavel", "20240210"))):
        data = dicom_bytes(patient_id=f"MRN-Q{n}", patient_name=name, seed=40 + n, study_date=date)
        tech.store_instances([pydicom.dcmread(io.BytesIO(data))])
    smith = dicom_bytes(patient_id="MRN-Q9", patient_name="Smith^Ann", seed=49)
    tech.store_instances([pydicom.dcmread(io.BytesIO(smith))])

    def ids(**filters: Any) -> list[str]:
        return sorted(pydicom.Dataset.from_json(s).PatientID for s in rossi.search_for_studies(**filters))

    assert ids(search_filters={"PatientName": "novak*"}) == ["MRN-Q0", "MRN-Q1"]
    assert ids(search_filters={"PatientName": "Novak^P?tra"}) == ["MRN-Q0"]
    assert ids(search_filters={"00100020": "MRN-Q1"}) == ["MRN-Q1"]  # a key given as its tag
    assert ids(search_filters={"StudyDate": "20240201-20240301"}) == ["MRN-Q1"]
    assert ids(search_filters={"StudyDate": "-20240131", "PatientID": "MRN-Q*"}) == ["MRN-Q0"]
    assert len(rossi.search_for_studies(search_filters={"PatientID": "MRN-Q*"}, limit=2)) == 2
    assert len(rossi.search_for_studies(search_filters={"PatientID": "MRN-Q*"}, limit=2, offset=2)) == 1

    [series] = rossi.search_for_series(
        search_filters={"PatientID": "MRN-Q0", "Modality": "DX"}, fields=["PatientName"]
    )
    assert str(pydicom.Dataset.from_json(series).PatientName) == "Novak^Petra"

    session = clients["dr.rossi"]._session
    bad = session.get(f"{web_url}/dicom-web/studies", params={"StudyDate": "2024-01-05"})
    assert bad.status_code == 400 and "StudyDate" in bad.json()["error"]


def test_a_rendered_instance_is_a_picture_through_the_asked_window(clients, web_url: str) -> None:
    source = pydicom.dcmread(SHARED_DICOM / "nih_dx_test2.dcm")
    clients["tech.ana"].store_instances([source])
    session = clients["dr.rossi"]._session
    url = (
        f"{web_url}/dicom-web/studies/{source.StudyInstanceUID}/series/{source.SeriesInstanceUID}"
        f"/instances/{source.SOPInstanceUID}/rendered"
    )
    default = session.get(url, headers={"Accept": "image/png"})
    narrow = session.get(url, params={"window": "100,10"}, headers={"Accept": "image/png"})
    jpeg = session.get(url)

    assert default.headers["Content-Type"] == "image/png" and jpeg.headers["Content-Type"] == "image/jpeg"
    picture = np.asarray(PILImage.open(io.BytesIO(default.content)))
    assert picture.shape[:2] == (source.Rows, source.Columns)
    # A 10-wide window makes nearly every pixel black or white.
    saturated = np.asarray(PILImage.open(io.BytesIO(narrow.content)))
    assert np.isin(saturated, (0, 255)).mean() > 0.9 > np.isin(picture, (0, 255)).mean()
    bad = session.get(url, params={"window": "wide"})
    assert bad.status_code == 400 and "window" in bad.json()["error"]


def test_who_may_use_dicomweb(web_url: str, django_user_model: Any) -> None:
    anonymous = requests.get(f"{web_url}/dicom-web/studies")
    no_role = token_session(django_user_model, "nobody").get(f"{web_url}/dicom-web/studies")
    assert anonymous.status_code == 401 and no_role.status_code == 403
    # A radiologist reads; storing needs the upload right, which radiologists and technologists have.
    rossi = token_session(django_user_model, "dr.chen", "radiologist")
    assert rossi.get(f"{web_url}/dicom-web/studies").status_code == 200
    assert stow(web_url, token_session(django_user_model, "nobody2"), [b"x"]).status_code == 403
