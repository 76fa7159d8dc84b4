"""A radiologist drafts, edits and signs a report in a real browser (Debian's Chromium via
Playwright, against uvicorn and a Celery worker that renders the PDF)."""

from __future__ import annotations

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
    assert "Lungs clear. No effusion." in text and "Signed by dr.grey on" in text

    # What was signed is what was on the screen at signing (read back through the API: the
    # ORM may not run beside Playwright's event loop).
    versions = page.request.get(f"{live_server_url}/api/studies/{study_to_report.pk}/reports/").json()
    assert [(v["state"], v["impression"]) for v in versions] == [("signed", "Lungs clear. No effusion.")]
