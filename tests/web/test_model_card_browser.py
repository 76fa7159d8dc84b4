"""A model card in a real browser (Debian's Chromium driven by Playwright) against uvicorn:
the rendered card with its figures, as a radiologist opens it from a result. A screenshot at
1440x900 is written to var/test-output/model-cards (or $RADTRIAGE_TEST_OUTPUT/model-cards)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.output import output_folder
from tests.web.fixtures import log_in, new_page, web_login_user, with_role

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
def page(chromium) -> Any:
    return new_page(chromium, width=1440, height=900)


def test_a_radiologist_reads_a_model_card_with_its_figures_in_the_browser(
    live_server_url,
    reader,
    page,
) -> None:
    from playwright.sync_api import expect

    log_in(page, live_server_url, "dr.card", "pw-card-123", next_path=f"/models/{MODEL}/card/")

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
