"""A radiologist drafts, edits and signs a report in a real browser (Debian's Chromium via
Playwright, against uvicorn and a Celery worker that renders the PDF)."""

from __future__ import annotations

import re

import pytest

from tests.output import TEST_OUTPUT
from tests.web.fixtures import log_in, png_bytes
from tests.web.test_browser import dr_grey, isolated_media  # noqa: F401 - fixtures
from tests.web.test_report_fields import seed_templates
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
    seed_templates()  # a transactional test's flush removes the ones the migration made
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
    live_server_url,
    study_to_report,
    browser_page,
    tmp_path,
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    log_in(page, live_server_url, "dr.grey", "pw-grey-123")
    page.goto(f"{live_server_url}/studies/{study_to_report.pk}/")
    page.click("#report-link")
    expect(page.locator("h1")).to_contain_text("Report: Ruth Report")

    page.fill("#findings", "Lungs clear.")
    page.fill("#impression", "Normal chest.")
    page.click("#save-draft")
    expect(page.locator("#report-message")).to_have_text("Draft version 1 saved.")
    page.fill("#findings", "Lungs clear. No effusion.")  # edited before signing
    # One click inserts the AI's results with their models into the findings, at the cursor.
    page.locator("#findings").press("End")
    page.click("#insert-ai")
    expect(page.locator("#findings")).to_have_value(
        re.compile(r"^Lungs clear\. No effusion\.\nAI, image 1: .*model ")
    )
    inserted = page.locator("#findings").input_value()
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
    assert "Findings Lungs clear. No effusion. AI, image 1:" in text and "Signed by dr.grey on" in text

    # What was signed is what was on the screen at signing (read back through the API: the
    # ORM may not run beside Playwright's event loop).
    versions = page.request.get(f"{live_server_url}/api/studies/{study_to_report.pk}/reports/").json()
    assert [(v["state"], v["findings"], v["impression"]) for v in versions] == [
        ("signed", inserted, "Normal chest.")
    ]
    assert (versions[0]["critical_told_to"], versions[0]["critical_told_how"]) == (
        "Dr Ito, ward 4",
        "in_person",
    )
    assert versions[0]["critical_acknowledged"] is True
    assert "Critical result: Suspected foreign body." in text and "Dr Ito, ward 4 in person" in text


@pytest.mark.parametrize(("width", "height"), [(1440, 900), (1920, 1080)])
def test_a_radiologist_writes_a_report_from_the_chest_template_and_signs_its_three_sections(
    live_server_url,
    study_to_report,
    browser_page,
    tmp_path,
    width: int,
    height: int,
) -> None:
    """Claim the chest study, pick the chest template (offered first: the study's region), keep
    the impression already written (the confirmation declined), insert the AI findings into the
    findings, write the impression, sign: the signed report shows its three sections."""
    from playwright.sync_api import expect

    page = browser_page
    page.set_viewport_size({"width": width, "height": height})
    log_in(page, live_server_url, "dr.grey", "pw-grey-123")
    page.goto(f"{live_server_url}/studies/{study_to_report.pk}/")
    page.click("#study-status-bar [data-action=claim]")
    expect(page.locator("#study-status-bar [data-action=release]")).to_be_visible()  # reloaded: held
    expect(page.locator("#study-status-bar .assignee")).to_have_text("dr.grey")
    page.goto(f"{live_server_url}/studies/{study_to_report.pk}/report/")

    first_group = page.locator("#template-choice optgroup").first
    expect(first_group).to_have_attribute("label", "For this body region")
    expect(first_group.locator("option").first).to_have_text("Chest X-ray, normal")
    page.fill("#clinical_information", "Cough and fever for three days.")
    page.fill("#impression", "Working impression.")
    page.select_option("#template-choice", label="Chest X-ray, normal")
    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    page.click("#apply-template")
    expect(page.locator("#report-message")).to_have_text(
        "Template “Chest X-ray, normal” applied; draft version 1 saved."
    )
    assert asked and "Impression" in asked[0] and "Findings" not in asked[0]  # only what was written
    expect(page.locator("#findings")).to_have_value(re.compile(r"^Heart size normal\..*No pleural effusion"))
    expect(page.locator("#impression")).to_have_value("Working impression.")  # declined: kept
    expect(page.locator("#clinical_information")).to_have_value("Cough and fever for three days.")

    page.locator("#findings").press("End")
    page.click("#insert-ai")
    expect(page.locator("#findings")).to_have_value(
        re.compile(
            r"No pleural effusion or pneumothorax\. .*\nAI, image 1: Pneumonia: .*model pneumonia-report-test"
        )
    )
    page.fill("#impression", "No acute cardiopulmonary abnormality.")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / f"report-template-{width}x{height}.png"), full_page=True)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#sign-report")

    signed = page.locator("#signed-reports article.signed-report")
    expect(signed).to_have_count(1)
    expect(signed.locator("h4")).to_have_text(["Clinical information", "Findings", "Impression"])
    expect(signed.locator(".report-text").nth(0)).to_have_text("Cough and fever for three days.")
    expect(signed.locator(".report-text").nth(1)).to_contain_text("Heart size normal.")
    expect(signed.locator(".report-text").nth(1)).to_contain_text("model pneumonia-report-test")
    expect(signed.locator(".report-text").nth(2)).to_have_text("No acute cardiopulmonary abnormality.")
    signed.scroll_into_view_if_needed()
    page.screenshot(path=str(OUTPUT / f"report-template-signed-{width}x{height}.png"), full_page=True)

    versions = page.request.get(f"{live_server_url}/api/studies/{study_to_report.pk}/reports/").json()
    assert [(v["state"], v["template_name"]) for v in versions] == [("signed", "Chest X-ray, normal")]
    pdf = page.request.get(f"{live_server_url}/api/reports/{versions[0]['id']}/pdf/")
    saved = tmp_path / "signed.pdf"
    saved.write_bytes(pdf.body())
    text = " ".join(pdf_text(saved).split())
    assert text.index("Clinical information Cough and fever") < text.index("Findings Heart size normal.")
    assert text.index("Findings Heart size normal.") < text.index("Impression No acute cardiopulmonary")
