"""The worklist in a real browser (Debian's Chromium via Playwright, uvicorn, a Celery worker):
search and filter, claim, a live update that keeps the filter, and an upload of two PNGs with
each file's own patient."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Group

from tests.output import TEST_OUTPUT
from tests.web.fixtures import log_in as log_in_as
from tests.web.fixtures import png_bytes, web_login_user
from tests.web.test_browser import _in_thread, isolated_media  # noqa: F401
from web.clinical.models import Patient, Study

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

OUTPUT = TEST_OUTPUT


@pytest.fixture()
def dr_bailey(django_user_model):
    # Created before the browser starts: Playwright's loop makes the ORM refuse to run after.
    user = web_login_user(django_user_model, "dr.bailey", "pw-bailey-123")
    user.groups.add(Group.objects.get_or_create(name="radiologist")[0])
    other = web_login_user(django_user_model, "dr.webber", "pw-webber-123")
    other.groups.add(Group.objects.get_or_create(name="radiologist")[0])
    return user, other


def _study(mrn: str, name: str, body_part: str, n: int) -> Study:
    patient = Patient.objects.create(patient_id=mrn, name=name)
    return Study.objects.create(
        patient=patient,
        study_instance_uid=f"1.2.826.0.9.{n}",
        accession_number=f"ACC-LIVE-{n}",
        body_part=body_part,
        status=Study.Status.AI_COMPLETE,
    )


def log_in(page, base_url: str) -> None:
    from playwright.sync_api import expect

    log_in_as(page, base_url, "dr.bailey", "pw-bailey-123")
    expect(page.locator("h1")).to_have_text("Worklist")
    expect(page.locator("#live-status")).to_have_text("live")


def test_a_radiologist_searches_filters_claims_and_live_updates_keep_the_filter(
    live_server_url,
    dr_bailey,
    browser_page,
) -> None:
    from playwright.sync_api import expect

    from web.clinical.worklist.claims import study_claim

    _, webber = dr_bailey
    _in_thread(lambda: _study("MRN-LIVE-1", "Karev^Alex", "CHEST", 1))
    other_chest = _in_thread(lambda: _study("MRN-LIVE-2", "Robbins^Arizona", "CHEST", 2))
    _in_thread(lambda: _study("MRN-LIVE-3", "Torres^Callie", "HAND", 3))
    page = browser_page
    log_in(page, live_server_url)
    expect(page.locator("#triage-order")).to_contain_text("the AI never lowers it")

    # Search by patient name.
    page.fill("#worklist-filters input[name=q]", "Karev")
    page.click("#worklist-filters button[type=submit]")
    expect(page.locator("#worklist-body tr[data-study-id]")).to_have_count(1)
    expect(page.locator("#worklist-body tr[data-study-id]")).to_contain_text("MRN-LIVE-1")

    # Filter by body region (the regions the rows show); claim one of the two chest studies.
    page.fill("#worklist-filters input[name=q]", "")
    page.select_option("#worklist-filters select[name=region]", "CHEST")
    page.click("#worklist-filters button[type=submit]")
    expect(page).to_have_url(re.compile(r"region=CHEST"))
    rows = page.locator("#worklist-body tr[data-study-id]")
    expect(rows).to_have_count(2)
    mine = page.locator("#worklist-body tr", has_text="MRN-LIVE-1")
    mine.get_by_role("button", name="Claim").click()
    expect(page.locator("#worklist-message")).to_have_text("Claimed.")
    expect(mine.locator("td.assigned")).to_have_text("dr.bailey")
    expect(mine.get_by_role("button", name="Release")).to_be_visible()

    # Another radiologist claims the other chest study elsewhere: the row changes here
    # without a reload, and the hand study stays filtered out.
    page.evaluate("window.__notReloaded = true")
    _in_thread(lambda: study_claim(study_id=other_chest.pk, user=webber))
    theirs = page.locator("#worklist-body tr", has_text="MRN-LIVE-2")
    expect(theirs.locator("td.assigned")).to_have_text("dr.webber")
    expect(theirs.get_by_role("button", name="Claim")).to_have_count(0)
    expect(rows).to_have_count(2)
    expect(page.locator("#worklist-body")).not_to_contain_text("MRN-LIVE-3")
    assert page.evaluate("window.__notReloaded") is True
    assert "region=CHEST" in page.url

    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / "worklist.png"), full_page=True)


def test_two_pngs_with_their_own_patients_each_get_their_outcome(
    live_server_url,
    dr_bailey,
    browser_page,
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    log_in(page, live_server_url)
    page.click("details.upload-drawer > summary")
    page.set_input_files(
        "#upload-form input[name=file]",
        [
            {"name": "knee.png", "mimeType": "image/png", "buffer": png_bytes(seed=31)},
            {"name": "other.png", "mimeType": "image/png", "buffer": png_bytes(seed=32)},
        ],
    )
    page.get_by_label("Patient ID for knee.png").fill("MRN-PNG-KNEE")
    page.get_by_label("Name for knee.png").fill("Yang^Cristina")
    page.get_by_label("Body region for knee.png").select_option("KNEE")
    page.get_by_label("Patient ID for other.png").fill("MRN-PNG-OTHER")
    page.click("#upload-form button[type=submit]")

    expect(page.locator("#upload-message")).to_have_text("2 stored, 0 already there, 0 refused")
    outcomes = page.locator("#upload-results > li")
    expect(outcomes).to_have_count(2)
    knee = outcomes.filter(has_text="knee.png")
    expect(knee).to_contain_text("of patient MRN-PNG-KNEE, body part KNEE")
    expect(knee).to_contain_text("Analyses queued: fracture, knee_osteoarthritis, knee_osteoporosis.")
    expect(outcomes.filter(has_text="other.png")).to_contain_text("of patient MRN-PNG-OTHER")
    for mrn in ("MRN-PNG-KNEE", "MRN-PNG-OTHER"):
        expect(page.locator("#worklist-body tr", has_text=mrn)).to_have_count(1)
    patients = _in_thread(
        lambda: sorted(
            Study.objects.filter(patient__patient_id__startswith="MRN-PNG-").values_list(
                "patient__patient_id", "body_part"
            )
        )
    )
    assert patients[0] == ("MRN-PNG-KNEE", "KNEE") and patients[1][0] == "MRN-PNG-OTHER"


def test_the_page_proposes_each_jpegs_body_region_and_the_uploader_may_change_it(
    live_server_url,
    dr_bailey,
    browser_page,
) -> None:
    from playwright.sync_api import expect

    from tests.web.test_upload_recognition import _film

    chest, knee = _film("pneumonia"), _film("knee_osteoarthritis")
    page = browser_page
    log_in(page, live_server_url)
    page.click("details.upload-drawer > summary")
    page.set_input_files(
        "#upload-form input[name=file]",
        [
            {"name": "chest.jpg", "mimeType": "image/jpeg", "buffer": chest},
            {"name": "knee.jpg", "mimeType": "image/jpeg", "buffer": knee},
        ],
    )

    chest_region = page.get_by_label("Body region for chest.jpg")
    expect(chest_region).to_have_value("CHEST")
    expect(page.get_by_label("Body region for knee.jpg")).to_have_value("KNEE")
    expect(page.locator("#upload-files tr", has_text="chest.jpg")).to_contain_text("seen as: ")
    chest_region.select_option("")  # the uploader's choice stands: back to "recognise"
    expect(chest_region).to_have_value("")


def test_hostile_files_on_the_upload_page_are_each_listed_with_the_server_s_reason(
    live_server_url,
    dr_bailey,
    browser_page,
) -> None:
    from playwright.sync_api import expect

    from tests.hostile_corpus import dicom, hostile_files

    chosen = {"random-dcm", "truncated-dicom", "dicom-no-pixels", "dicom-mpeg2", "dicom-huge-uid"}
    hostile = [c for c in hostile_files() if c.id in chosen]
    page = browser_page
    log_in(page, live_server_url)
    page.click("details.upload-drawer > summary")
    page.set_input_files(
        "#upload-form input[name=file]",
        [{"name": "good.dcm", "mimeType": "application/dicom", "buffer": dicom(seed=4242)}]
        + [{"name": c.name, "mimeType": "application/dicom", "buffer": c.data} for c in hostile],
    )
    page.click("#upload-form button[type=submit]")

    expect(page.locator("#upload-message")).to_have_text(f"1 stored, 0 already there, {len(hostile)} refused")
    errors = page.locator("#upload-errors > li")
    expect(errors).to_have_count(len(hostile))
    for case in hostile:
        item = errors.filter(has_text=case.name)
        expect(item).to_have_count(1)
        expect(item).to_contain_text(re.compile(re.escape(case.message), re.IGNORECASE))
    expect(page.locator("#upload-results > li", has_text="good.dcm")).to_contain_text("Stored in")
