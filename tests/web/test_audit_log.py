"""The audit log has one entry per thing a person does, not one per request a page makes."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from rest_framework.test import APIClient

from tests.web.fixtures import dicom_bytes, png_bytes, upload, with_role
from web.clinical.models import Analysis, AuditEvent

pytestmark = pytest.mark.django_db


@pytest.fixture()
def study(api) -> dict:
    body = upload(api, dicom_bytes(patient_id="MRN-AUDIT")).json()
    analysis = Analysis.objects.filter(image_id=body["image"]["id"]).first()
    analysis.heatmap_raw.save("heat.png", ContentFile(png_bytes(size=32)), save=False)
    analysis.state = Analysis.State.SUCCEEDED
    analysis.save()
    return {"id": body["study"]["id"], "analysis": analysis.pk}


def views(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action))


def test_opening_a_study_page_writes_one_entry(api, study) -> None:
    # What the browser does: the page, then the page's script refreshing the study from the API.
    assert api.get(f"/studies/{study['id']}/").status_code == 200
    assert api.get(f"/api/studies/{study['id']}/").status_code == 200

    [event] = views("study.view")
    assert event.actor_label == "dr.house" and event.patient.patient_id == "MRN-AUDIT"


def test_showing_a_heat_map_writes_one_entry_and_a_download_another(api, study) -> None:
    url = f"/api/analyses/{study['analysis']}/heatmap/"
    # The page's heat-map layer, then the same layer redrawn by the page's script.
    assert api.get(url, {"kind": "raw"}).status_code == 200
    assert api.get(url, {"kind": "raw", "v": "2026-12-01T09:00:00Z"}).status_code == 200
    assert [e.detail for e in views("heatmap.download")] == [{"kind": "raw"}]

    # Opening the full-resolution overlay is another action: another entry.
    api.get(url, {"kind": "color"})
    assert sorted(e.detail["kind"] for e in views("heatmap.download")) == ["color", "raw"]


def test_another_person_viewing_the_same_study_gets_their_own_entry(api, study, django_user_model) -> None:
    api.get(f"/api/studies/{study['id']}/")
    colleague = with_role(
        django_user_model.objects.create_user("dr.cuddy", password="pw-cuddy-1"), "radiologist"
    )
    other = APIClient()
    other.force_login(colleague)
    other.get(f"/api/studies/{study['id']}/")

    assert sorted(e.actor_label for e in views("study.view")) == ["dr.cuddy", "dr.house"]


def test_viewing_again_later_is_a_new_entry(api, study, settings) -> None:
    settings.RADTRIAGE_AUDIT_REPEAT_SECONDS = 0  # every read is its own action
    api.get(f"/studies/{study['id']}/")
    api.get(f"/studies/{study['id']}/")

    assert len(views("study.view")) == 2
