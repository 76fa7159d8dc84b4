"""The login page, the worklist order and how results are shown on the study page."""

from __future__ import annotations

from django.test import Client

from tests.web.fixtures import dicom_bytes, upload
from web.clinical.models import Analysis, Study
from web.clinical.worklist.states import studies_refresh


def _finish(analysis: Analysis, **fields) -> None:
    defaults = dict(
        state="succeeded",
        probability=0.91,
        threshold=0.5,
        positive=True,
        model_id="pneumonia-mobilenetv2-v1",
        model_sha256="ab" * 32,
    )
    for key, value in {**defaults, **fields}.items():
        setattr(analysis, key, value)
    analysis.save()
    studies_refresh(studies=[analysis.image.study])  # as the worker does when a job ends


def _logged_in(radiologist) -> Client:
    client = Client()
    client.force_login(radiologist)
    return client


def test_the_worklist_needs_a_login(db) -> None:
    response = Client().get("/")

    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_a_radiologist_logs_in_with_the_login_page(radiologist) -> None:
    client = Client()
    assert "Log in" in client.get("/login/").content.decode()
    response = client.post("/login/", {"username": "dr.house", "password": "pw-radiologist"})

    assert response.status_code == 302 and response["Location"] == "/"
    assert "Worklist" in client.get("/").content.decode()


def test_a_wrong_password_is_told_so(radiologist) -> None:
    response = Client().post("/login/", {"username": "dr.house", "password": "nope"})

    assert "didn't match" in response.content.decode()


def test_the_worklist_shows_stat_first_then_ai_flagged_studies(api, radiologist) -> None:
    routine = upload(api, dicom_bytes(patient_id="MRN-R1", seed=1), conditions="pneumonia")
    flagged = upload(api, dicom_bytes(patient_id="MRN-R2", seed=2), conditions="pneumonia")
    upload(api, dicom_bytes(patient_id="MRN-S", seed=3), conditions="pneumonia", priority="stat")
    _finish(Analysis.objects.get(pk=flagged.json()["image"]["analyses"][0]["id"]))
    _finish(
        Analysis.objects.get(pk=routine.json()["image"]["analyses"][0]["id"]), probability=0.1, positive=False
    )

    order = [s["patient"]["patient_id"] for s in api.get("/api/studies/").json()["results"]]
    page = _logged_in(radiologist).get("/").content.decode()

    assert order == ["MRN-S", "MRN-R2", "MRN-R1"]
    assert page.index("MRN-S") < page.index("MRN-R2") < page.index("MRN-R1")
    assert page.count("AI flag") == 1


def test_a_placeholder_result_says_no_diagnostic_value_and_is_never_a_finding(api, radiologist) -> None:
    body = upload(api, dicom_bytes(patient_id="MRN-PH"), conditions="cardiomegaly").json()
    analysis = Analysis.objects.get(pk=body["image"]["analyses"][0]["id"])
    _finish(
        analysis,
        is_placeholder=True,
        positive=True,
        probability=0.97,
        model_id="placeholder:cardiomegaly",
        model_sha256="",
        placeholder_reason="No active model is registered for cardiomegaly.",
    )

    page = _logged_in(radiologist).get(f"/studies/{body['study']['id']}/").content.decode()
    worklist = api.get("/api/studies/").json()["results"][0]
    result = api.get(f"/api/analyses/{analysis.pk}/").json()

    assert "NO DIAGNOSTIC VALUE" in page and "No active model is registered" in page
    assert "AI flag" not in page and "0.970" not in page
    assert worklist["ai_flagged"] is False
    assert result["is_finding"] is False
    assert result["display_warning"].startswith("PLACEHOLDER MODEL: NO DIAGNOSTIC VALUE")


def test_an_experimental_result_carries_its_warning_next_to_the_number(api, radiologist) -> None:
    body = upload(api, dicom_bytes(patient_id="MRN-EX"), conditions="pneumonia").json()
    _finish(
        Analysis.objects.get(pk=body["image"]["analyses"][0]["id"]),
        experimental=True,
        experimental_reason="Trained on 300 images; not validated.",
    )

    page = _logged_in(radiologist).get(f"/studies/{body['study']['id']}/").content.decode()

    assert "EXPERIMENTAL MODEL" in page and "Trained on 300 images" in page
    assert "0.910" in page and "pneumonia-mobilenetv2-v1" in page


def test_the_study_page_subscribes_to_its_live_events(api, radiologist) -> None:
    study_id = upload(api, dicom_bytes()).json()["study"]["id"]
    page = _logged_in(radiologist).get(f"/studies/{study_id}/").content.decode()

    assert f"RADTRIAGE_STUDY_ID = {study_id}" in page and "ui/study.js" in page
    assert Study.objects.get(pk=study_id).status == "analysing"


def test_the_ai_flag_follows_the_latest_results_of_the_study(api) -> None:
    body = upload(api, dicom_bytes(patient_id="MRN-FLAG"), conditions="pneumonia").json()
    first = Analysis.objects.get(pk=body["image"]["analyses"][0]["id"])
    _finish(first)
    assert api.get("/api/studies/").json()["results"][0]["ai_flagged"] is True

    # Re-run on a corrected model: the finding is gone, so is the flag.
    first.delete()
    again = api.post(
        f"/api/images/{body['image']['id']}/analyses/", {"conditions": ["pneumonia"]}, format="json"
    ).json()[0]
    _finish(Analysis.objects.get(pk=again["id"]), probability=0.05, positive=False)
    study = api.get("/api/studies/").json()["results"][0]
    assert study["ai_flagged"] is False and study["pending_count"] == 0
    assert study["image_count"] == 1
