"""A model card in a real browser (Debian's Chromium driven by Playwright) against uvicorn:
the rendered card with its figures, as a radiologist opens it from a result. A screenshot at
1440x900 is written to var/test-output/model-cards (or $RADTRIAGE_TEST_OUTPUT/model-cards)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.output import output_folder
from tests.web.fixtures import web_login_user, with_role
from tests.web.test_browser import CHROMIUM, live_server_url  # noqa: F401 - the fixture

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

MODEL = "fracture-mobilenetv2-384-boxed-v2"  # the web server reads the shipped registry.json


@pytest.fixture(autouse=True)
def isolated_media(settings):
    """The web server is a subprocess: keep the session's MEDIA_ROOT."""
    return settings.MEDIA_ROOT


@pytest.fixture()
def reader(django_user_model) -> Any:
    # Made before the browser starts: Playwright's loop makes the ORM refuse to run after.
    return with_role(web_login_user(django_user_model, "dr.card", "pw-card-123"), "radiologist")


@pytest.fixture()
def page() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def test_a_radiologist_reads_a_model_card_with_its_figures_in_the_browser(
    live_server_url,  # noqa: F811
    reader,
    page,
) -> None:
    from playwright.sync_api import expect

    page.goto(f"{live_server_url}/login/?next=/models/{MODEL}/card/")
    page.fill("input[name=username]", "dr.card")
    page.fill("input[name=password]", "pw-card-123")
    page.click("button[type=submit]")

    expect(page.locator("#model-card h1")).to_have_text(f"Model card: {MODEL}")
    expect(page.locator("#model-card h2", has_text="Performance (95% intervals)")).to_be_visible()
    expect(page.locator("#model-card table").first).to_be_visible()
    figures = page.locator("#model-card-figures img")
    expect(figures).to_have_count(3)
    for i in range(3):
        figures.nth(i).scroll_into_view_if_needed()
        expect(figures.nth(i)).to_have_js_property("complete", True)
        assert figures.nth(i).evaluate("img => img.naturalWidth") > 100
    page.evaluate("window.scrollTo(0, 0)")
    page.locator("#model-card-figures").evaluate("aside => { aside.scrollTop = 0; }")
    # At this width the figures stand beside the card, in view without scrolling.
    assert figures.first.bounding_box()["x"] > page.locator("#model-card").bounding_box()["x"] + 600
    shot = output_folder("model-cards") / f"{MODEL}-1440x900.png"
    page.screenshot(path=str(shot))
    print(f"model card screenshot: {shot}")
    assert shot.stat().st_size > 10_000
