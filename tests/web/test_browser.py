"""A real browser (Debian's Chromium driven by Playwright) against uvicorn + a Celery worker:
log in, upload on the worklist, watch the pages update without reloading them."""

from __future__ import annotations

import re

import pytest

from tests.web.fixtures import dicom_bytes, wait_for, web_login_user, with_role

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def isolated_media(settings):
    """Here the web server and the worker are subprocesses: keep the session's MEDIA_ROOT."""
    return settings.MEDIA_ROOT


@pytest.fixture()
def dr_grey(django_user_model):
    # Created before the browser starts: Playwright's loop makes the ORM refuse to run after.
    return with_role(web_login_user(django_user_model, "dr.grey", "pw-grey-123"), "radiologist")


def log_in_to_the_live_worklist(page, base_url: str) -> None:
    """Anonymous -> login page -> the worklist with its websocket connected."""
    from playwright.sync_api import expect

    page.goto(base_url + "/")
    expect(page).to_have_url(re.compile(r"/login/"))
    page.fill("input[name=username]", "dr.grey")
    page.fill("input[name=password]", "pw-grey-123")
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Worklist")
    expect(page.locator("#live-status")).to_have_text("live")


def test_a_radiologist_watches_an_upload_get_analysed_without_reloading(
    live_server_url, dr_grey, browser_page
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    log_in_to_the_live_worklist(page, live_server_url)

    # Upload through the worklist's form; the row appears and turns "Ready for review" by itself.
    page.click("details.upload-drawer > summary")
    page.set_input_files(
        "input[name=file]",
        files=[
            {
                "name": "chest.dcm",
                "mimeType": "application/dicom",
                "buffer": dicom_bytes(patient_id="MRN-UI", patient_name="Grey^Meredith"),
            }
        ],
    )
    page.click("#upload-form button[type=submit]")
    expect(page.locator("#upload-message")).to_have_text("Uploaded; analyses queued.")
    row = page.locator("#worklist-body tr", has_text="MRN-UI")
    expect(row).to_contain_text("Ready for review", timeout=120_000)  # AI complete

    # The study page: the real model's result with its heat map, the placeholder labelled.
    row.locator("a").click()
    expect(page.locator("h1")).to_contain_text("Meredith Grey")
    pneumonia = page.locator(".analysis", has_text="pneumonia")
    expect(pneumonia).to_contain_text("Succeeded")
    expect(pneumonia).to_contain_text("pneumonia-tiny-test")
    expect(pneumonia.locator(".prob")).to_have_text(re.compile(r"^[01]\.\d{3}$"))
    from playwright.sync_api import Error as PlaywrightError

    heat_layer = pneumonia.locator("img.heat-layer")
    xray_layer = pneumonia.locator("img.xray-layer")

    def settled(query):  # the card may be redrawn once when the page's socket connects
        def attempt():
            try:
                return query()
            except PlaywrightError:
                return None

        return attempt

    wait_for(
        settled(lambda: heat_layer.evaluate("img => img.complete && img.naturalWidth") > 0),
        timeout=30,
        what="the heat map layer to load",
    )
    # The heat map lies exactly over the X-ray, and the slider sets how strongly it shows.
    wait_for(
        settled(
            lambda: (
                heat_layer.bounding_box() is not None
                and heat_layer.bounding_box() == xray_layer.bounding_box()
            )
        ),
        timeout=30,
        what="the heat map to lie exactly over the X-ray",
    )

    def opacity() -> float | None:
        value = heat_layer.evaluate("img => getComputedStyle(img).opacity")
        return float(value) if value else None  # '' while a redrawn card replaces the image

    wait_for(settled(lambda: opacity() == 0.4), timeout=10, what="the default intensity 40 %")
    page.locator("#heat-intensity").fill("75")
    expect(page.locator("#heat-intensity-value")).to_have_text("75 %")
    wait_for(settled(lambda: opacity() == 0.75), timeout=10, what="the heat map at 75 %")
    full = pneumonia.locator("a.heatmap")
    overlay = page.request.get(live_server_url + full.get_attribute("href"))
    assert overlay.ok and overlay.headers["content-type"] == "image/png"
    placeholder = page.locator(".analysis", has_text="cardiomegaly")
    expect(placeholder.locator(".placeholder-warning")).to_contain_text("NO DIAGNOSTIC VALUE")
    expect(placeholder).not_to_contain_text("AI flag")
    expect(placeholder.locator(".prob")).to_have_count(0)

    # A re-run requested elsewhere shows up on this open page and finishes, with no reload
    # by the user.
    image_id = page.locator("section.image").get_attribute("data-image-id")
    status = page.evaluate(
        """async (imageId) => {
            const r = await fetch(`/api/images/${imageId}/analyses/`, {method: "POST",
              headers: {"Content-Type": "application/json", "X-CSRFToken": radtriageCsrf()},
              body: JSON.stringify({conditions: ["pneumonia"]})});
            return r.status;
        }""",
        image_id,
    )
    assert status == 201
    expect(page.locator(".analysis", has_text="pneumonia")).to_have_count(2, timeout=60_000)
    expect(page.locator(".analysis.state-succeeded", has_text="pneumonia")).to_have_count(2, timeout=120_000)


def _in_thread(query):
    """Run an ORM query off Playwright's thread (its event loop makes Django refuse there)."""
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection

    def run():
        try:
            return query()
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()


def test_a_technologist_uploads_several_xrays_at_once_and_sees_which_were_refused(
    live_server_url, dr_grey, browser_page
) -> None:
    from playwright.sync_api import expect

    from web.clinical.models import Image

    images_before = _in_thread(lambda: Image.objects.count())
    page = browser_page
    log_in_to_the_live_worklist(page, live_server_url)

    page.click("details.upload-drawer > summary")
    expect(page.locator("details.upload-drawer > summary")).to_have_text("Upload X-rays")
    page.set_input_files(
        "#upload-form input[type=file]",
        [
            {
                "name": "first.dcm",
                "mimeType": "application/dicom",
                "buffer": dicom_bytes(patient_id="MRN-BULK-1", patient_name="Bailey^Miranda", seed=1),
            },
            {
                "name": "second.dcm",
                "mimeType": "application/dicom",
                "buffer": dicom_bytes(patient_id="MRN-BULK-2", patient_name="Webber^Richard", seed=2),
            },
            {"name": "broken.dcm", "mimeType": "application/dicom", "buffer": b"not an x-ray"},
        ],
    )
    page.click("#upload-form button[type=submit]")

    # What the user sees at the end: the tally, the refused file with its reason, a full bar.
    expect(page.locator("#upload-message")).to_have_text("2 stored, 0 already there, 1 refused")
    expect(page.locator("#upload-count")).to_have_text("Uploaded 3 of 3 files.")
    errors = page.locator("#upload-errors li")
    expect(errors).to_have_count(1)
    expect(errors).to_contain_text("broken.dcm")
    expect(errors).to_have_text(re.compile(r"^broken\.dcm: \S.*"))
    progress = page.locator("#upload-progress")
    expect(progress).to_be_visible()
    assert progress.evaluate("p => p.max > 1 && p.value === p.max"), progress.evaluate(
        "p => [p.value, p.max]"
    )
    expect(page.locator("#upload-form button[type=submit]")).to_be_enabled()

    # Both new patients show up on the worklist without a reload, and their analyses finish.
    for mrn in ("MRN-BULK-1", "MRN-BULK-2"):
        row = page.locator("#worklist-body tr", has_text=mrn)
        expect(row).to_have_count(1)
        expect(row).to_contain_text("Ready for review", timeout=120_000)  # AI complete
    assert _in_thread(lambda: Image.objects.count()) == images_before + 2
    assert sorted(
        _in_thread(
            lambda: list(
                Image.objects.filter(study__patient__patient_id__startswith="MRN-BULK-").values_list(
                    "study__patient__patient_id", flat=True
                )
            )
        )
    ) == ["MRN-BULK-1", "MRN-BULK-2"]
