"""Through a real worker: a result from an image outside the model's population, or from an
experimental model, never flags its study and never moves it up the worklist, however sure
the model is. The same always-yes model on a child of its population does flag."""

from __future__ import annotations

import pytest

from tests.web.fixtures import dicom_bytes, upload, wait_for
from web.clinical.models import Analysis

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _study_with_pneumonia_from(
    api, model_id: str, patient_id: str, birth_date: str = "19700101"
) -> tuple[int, int]:
    # The study's own upload only runs the placeholder (cardiomegaly): never a flag.
    body = upload(
        api,
        dicom_bytes(patient_id=patient_id, accession=f"ACC-{patient_id}", birth_date=birth_date),
        conditions="cardiomegaly",
    ).json()
    response = api.post(
        f"/api/images/{body['image']['id']}/analyses/",
        {"conditions": ["pneumonia"], "model_id": model_id},
        format="json",
    )
    assert response.status_code == 201, response.content
    return body["study"]["id"], response.json()[0]["id"]


def _finished(analysis_id: int) -> Analysis:
    return wait_for(
        lambda: Analysis.objects.filter(pk=analysis_id, state="succeeded").first(),
        timeout=120,
        what=f"analysis {analysis_id} to finish",
    )


def test_not_applicable_and_experimental_results_never_flag_or_reorder_the_worklist(live_worker, api) -> None:
    # Oldest first: the real flag must still come first.
    # A 3-year-old (the study is dated 2026-11-25): inside the children's model's population.
    flagged_study, flagged = _study_with_pneumonia_from(
        api, "pneumonia-always-yes-children", "MRN-F1", birth_date="20230601"
    )
    adult_study, adult = _study_with_pneumonia_from(api, "pneumonia-always-yes-children", "MRN-F2")
    experimental_study, experimental = _study_with_pneumonia_from(
        api, "pneumonia-always-yes-experimental", "MRN-F3"
    )
    for analysis_id in (flagged, adult, experimental):
        _finished(analysis_id)

    adult_result = api.get(f"/api/analyses/{adult}/").json()
    experimental_result = api.get(f"/api/analyses/{experimental}/").json()
    flagged_result = api.get(f"/api/analyses/{flagged}/").json()
    worklist = api.get("/api/studies/").json()["results"]

    # The patient born in 1970 is no child: outside the children's model, said in words.
    assert adult_result["applicable"] is False and adult_result["positive"] is None
    assert adult_result["probability"] > 0.99 and adult_result["is_finding"] is False
    assert "outside 1-5 years" in adult_result["not_applicable_reason"]
    assert adult_result["warnings"][0]["kind"] == "not_applicable"
    assert experimental_result["positive"] is True and experimental_result["is_finding"] is False
    assert "not used for triage" in experimental_result["display_warning"]
    assert flagged_result["is_finding"] is True  # the same model, on a child
    flags = {s["id"]: s["ai_flagged"] for s in worklist}
    assert flags == {flagged_study: True, adult_study: False, experimental_study: False}
    # The real finding first; the other two keep the order of their waiting time (the adult's
    # study came first), as if they had no AI result: their "positives" move nothing up.
    assert [s["id"] for s in worklist] == [flagged_study, adult_study, experimental_study]


def test_the_study_page_shows_a_not_applicable_result_as_such_not_as_a_negative(
    live_worker, api, client, radiologist
) -> None:
    study, analysis = _study_with_pneumonia_from(api, "pneumonia-always-yes-children", "MRN-F4")
    _finished(analysis)
    client.force_login(radiologist)

    page = client.get(f"/studies/{study}/").content.decode()

    assert "NOT APPLICABLE, never flagged." in page and "outside 1-5 years" in page
    assert "below threshold" not in page and "AI flag" not in page
