"""A radiologist drafts, edits and signs a report in a real browser (Debian's Chromium via
Playwright, against uvicorn and a Celery worker that renders the PDF)."""

from __future__ import annotations

import re

import pytest

from tests.output import TEST_OUTPUT
from tests.web.fixtures import png_bytes
from tests.web.test_browser import browser_page, dr_grey, live_server_url  # noqa: F401 - fixtures
from tests.web.test_reports import pdf_text
from web.clinical.models import Study

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

OUTPUT = TEST_OUTPUT


@pytest.fixture()
def study_to_report(dr_grey) -> Study:  # noqa: F811 - the fixture imported above
    # Made before the browser starts: Playwright's loop makes the ORM refuse to run after.
    from web.clinical.ingest.parts import UploadFields
    from web.clinical.ingest.uploads import image_upload

    result = image_upload(
        data=png_bytes(size=256, seed=5),
        filename="chest.png",
        fields=UploadFields(patient_id="MRN-RPT-UI", patient_name="Report^Ruth", body_part="CHEST"),
        conditions=[],
    )
    # A finished result to insert into the report (the model's output as a job stores it).
    from django.utils import timezone

    from web.clinical.models import Analysis

    Analysis.objects.create(
        image=result.image,
        condition="pneumonia",
        state=Analysis.State.SUCCEEDED,
        probability=0.12,
        threshold=0.5,
        positive=False,
        applicable=True,
        model_id="pneumonia-report-test",
        model_sha256="ef" * 32,
        finished_at=timezone.now(),
    )
    return result.image.study


def test_a_radiologist_drafts_edits_and_signs_a_report(
    live_server_url,  # noqa: F811
    study_to_report,
    browser_page,  # noqa: F811
    tmp_path,
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    page.goto(live_server_url + "/login/")
    page.fill("input[name=username]", "dr.grey")
    page.fill("input[name=password]", "pw-grey-123")
    page.click("button[type=submit]")
    page.goto(f"{live_server_url}/studies/{study_to_report.pk}/")
    page.click("#report-link")
    expect(page.locator("h1")).to_contain_text("Report: Ruth Report")

    page.fill("#impression", "Lungs clear.")
    page.click("#save-draft")
    expect(page.locator("#report-message")).to_have_text("Draft version 1 saved.")
    page.fill("#impression", "Lungs clear. No effusion.")  # edited before signing
    # One click inserts the AI's results with their models where the cursor is.
    page.locator("#impression").press("End")
    page.click("#insert-ai")
    expect(page.locator("#impression")).to_have_value(
        re.compile(r"^Lungs clear\. No effusion\.\nAI, image 1: .*model ")
    )
    inserted = page.locator("#impression").input_value()
    # A critical result, communicated and acknowledged, signed with the report.
    page.fill("[name=critical_finding]", "Suspected foreign body")
    page.fill("[name=critical_told_to]", "Dr Ito, ward 4")
    page.select_option("[name=critical_told_how]", "in_person")
    page.fill("[name=critical_told_at]", "2026-11-25T09:15")
    page.check("[name=critical_acknowledged]")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#sign-report")

    row = page.locator("#report-versions tr[data-report-id]")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("Signed")
    expect(row).to_contain_text("dr.grey")
    expect(page.locator("#editor-title")).to_have_text("Write an addendum")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / "report-page.png"), full_page=True)
    pdf = page.request.get(live_server_url + (row.locator("a", has_text="PDF").get_attribute("href") or ""))
    assert pdf.ok and pdf.headers["content-type"] == "application/pdf"
    saved = tmp_path / "signed.pdf"
    saved.write_bytes(pdf.body())
    text = " ".join(pdf_text(saved).split())
    assert "Lungs clear. No effusion. AI, image 1:" in text and "Signed by dr.grey on" in text

    # What was signed is what was on the screen at signing (read back through the API: the
    # ORM may not run beside Playwright's event loop).
    versions = page.request.get(f"{live_server_url}/api/studies/{study_to_report.pk}/reports/").json()
    assert [(v["state"], v["impression"]) for v in versions] == [("signed", inserted)]
    assert (versions[0]["critical_told_to"], versions[0]["critical_told_how"]) == (
        "Dr Ito, ward 4",
        "in_person",
    )
    assert versions[0]["critical_acknowledged"] is True
    assert "Critical result: Suspected foreign body." in text and "Dr Ito, ward 4 in person" in text
