"""No patient identifier in any log line of the deployed processes: the web process and the DICOM
listener as the Procfile (`make run`) starts them, and the session's real Celery worker. A user
searches for a patient by name and by ID (query strings), uploads that patient's X-ray, a PACS
sends another of the patient's images and one that clashes with another patient's study; then
every line the three processes wrote is searched for the identifiers."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
import requests

from tests.web.fixtures import (
    dicom_bytes,
    free_port,
    procfile_service,
    service_env,
    wait_for,
    web_login_user,
    with_role,
)
from web.logs import query_dropped

NAME = "Okonkwo^Brunhilde"
PATIENT_ID = "MRN-LOG-5521"
OTHER_ID = "MRN-LOG-8830"  # the patient a wrong-patient image claims to be
IDENTIFIERS = (NAME, "Okonkwo", "Brunhilde", PATIENT_ID, "LOG-5521", OTHER_ID, "LOG-8830")
PASSWORD = "correct horse battery staple"


def leaked(text: str) -> list[str]:
    return [needle for needle in IDENTIFIERS if needle.lower() in text.lower()]


def c_store(port: int, *instances: bytes) -> list[int]:
    from pynetdicom import AE
    from pynetdicom.sop_class import SecondaryCaptureImageStorage  # type: ignore[attr-defined]

    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(SecondaryCaptureImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADTRIAGE")
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(pydicom.dcmread(io.BytesIO(data))).Status) for data in instances]
    assoc.release()
    return statuses


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_searches_uploads_and_dicom_leave_no_identifier_in_any_log(
    live_worker, tiny_registry: Path, service_logs: Path, django_user_model, settings
) -> None:
    from web.clinical.models import Analysis

    with_role(web_login_user(django_user_model, "dr.okafor", PASSWORD), "radiologist")
    env = service_env(RADTRIAGE_REGISTRY=str(tiny_registry))
    web_port, dicom_port = free_port(), free_port()
    web = procfile_service("web", {**env, "RADTRIAGE_PORT": str(web_port)}, service_logs)
    listener = procfile_service("dicom", {**env, "RADTRIAGE_DICOM_PORT": str(dicom_port)}, service_logs)
    web.start(ready_text="Uvicorn running on", timeout=90)
    listener.start(ready_text="DICOM listener ready", timeout=90)
    worker_log_start = len(live_worker.log())
    url = f"http://127.0.0.1:{web_port}"
    try:
        token = requests.post(
            f"{url}/api/auth/token/", data={"username": "dr.okafor", "password": PASSWORD}, timeout=60
        ).json()["token"]
        auth = {"Authorization": f"Token {token}"}
        # Searches: the worklist page (anonymous: sent to log in, the search kept in `next`)...
        page = requests.get(f"{url}/", params={"q": NAME}, timeout=60)
        # ...and the API, by name and by patient ID.
        searches = [
            requests.get(f"{url}/api/studies/", params={"search": term}, headers=auth, timeout=60)
            for term in (NAME, PATIENT_ID)
        ]
        study_uid = pydicom.uid.generate_uid()
        uploaded = requests.post(
            f"{url}/api/uploads/",
            files={
                "file": (
                    "chest.dcm",
                    dicom_bytes(patient_id=PATIENT_ID, patient_name=NAME, study_uid=study_uid),
                )
            },
            headers=auth,
            timeout=60,
        )
        statuses = c_store(
            dicom_port,
            dicom_bytes(patient_id=PATIENT_ID, patient_name=NAME, study_uid=study_uid, seed=5),
            dicom_bytes(patient_id=OTHER_ID, patient_name="Other^Person", study_uid=study_uid, seed=6),
        )
        wait_for(
            lambda: (
                Analysis.objects.filter(image__study__patient__patient_id=PATIENT_ID).count() >= 2
                and not Analysis.objects.filter(state__in=["queued", "running"]).exists()
            ),
            timeout=180,
            what="the analyses of both stored images to finish",
        )
    finally:
        web.stop()
        listener.stop()
    worker_log = live_worker.log()[worker_log_start:]

    # It all happened: the searches were answered, the images stored, analysed, one refused.
    assert page.history and page.status_code == 200, page.status_code
    assert [s.status_code for s in searches] == [200, 200]
    assert searches[1].json()["count"] == 0  # nothing stored yet when it searched
    assert uploaded.status_code == 201, uploaded.text
    assert statuses[0] == 0x0000 and statuses[1] != 0x0000, [hex(s) for s in statuses]
    assert "worker.tasks" in worker_log
    assert "Refused" in listener.log()

    # Not one identifier in any of the three processes' logs.
    assert leaked(web.log()) == [], web.log()[-3000:]
    assert leaked(listener.log()) == [], listener.log()[-3000:]
    assert leaked(worker_log) == [], worker_log[-3000:]
    assert "GET /api/studies/? HTTP/1.1" in web.log()  # the request is logged, its query not


@pytest.mark.parametrize(
    ("line", "logged"),
    [
        ("GET /?q=Doe%5EJane HTTP/1.1", "GET /? HTTP/1.1"),
        ("/api/studies/?search=MRN-1&limit=5", "/api/studies/?"),
        ("/api/studies/", "/api/studies/"),
        ("/login/?next=/%3Fq%3DDoe", "/login/?"),
    ],
)
def test_a_logged_request_line_keeps_its_path_and_drops_its_query(line: str, logged: str) -> None:
    assert query_dropped(line) == logged
