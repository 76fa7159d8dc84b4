"""The reading layout in Chromium at the two screens radiologists use most, 1440x900 (a
laptop) and 1920x1080: at least 20 worklist rows in view without scrolling, and on the study
page the whole image (the canvas) and its AI result card in view without scrolling. Screenshots
in var/test-output/layout/."""

from __future__ import annotations

from typing import Any

import pytest

from tests.output import output_folder
from tests.web.test_browser import _in_thread, live_server_url  # noqa: F401 - the fixture
from tests.web.test_viewer_browser import (  # noqa: F401 - fixtures
    analysed_study,
    browser,
    isolated_media,
    open_study,
    team,
)
from web.clinical.models import Patient, Study

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SCREENS = [(1440, 900), (1920, 1080)]

IN_VIEW = """(el) => {
  const r = el.getBoundingClientRect();
  return r.width > 0 && r.height > 0 && r.top >= 0 && r.left >= 0
    && r.bottom <= window.innerHeight && r.right <= window.innerWidth;
}"""


def _more_studies(count: int) -> None:
    for n in range(count):
        patient = Patient.objects.create(patient_id=f"MRN-ROW-{n:02d}", name=f"Row^Patient {n:02d}")
        Study.objects.create(
            patient=patient,
            study_instance_uid=f"1.2.826.0.9.77.{n}",
            accession_number=f"ACC-ROW-{n:02d}",
            body_part="CHEST",
            modality="DX",
            status=Study.Status.AI_COMPLETE,
        )


@pytest.mark.parametrize(("width", "height"), SCREENS)
def test_the_worklist_shows_twenty_rows_and_the_study_page_the_image_and_its_result(
    live_server_url,  # noqa: F811
    analysed_study,  # noqa: F811
    browser,  # noqa: F811
    width: int,
    height: int,
) -> None:
    _in_thread(lambda: _more_studies(24))
    folder = output_folder("layout")
    page: Any = open_study(browser, live_server_url, "dr.ada", analysed_study["study"])
    page.set_viewport_size({"width": width, "height": height})
    page.wait_for_timeout(300)  # the viewer refits the image to the new size

    canvas = page.locator("canvas.viewer-canvas")
    card = page.locator(".analysis").first
    page.screenshot(path=str(folder / f"study-{width}x{height}.png"))
    assert canvas.evaluate(IN_VIEW), canvas.bounding_box()
    assert card.evaluate(IN_VIEW), card.bounding_box()
    assert page.evaluate("document.scrollingElement.scrollTop") == 0

    page.goto(live_server_url + "/")
    rows = page.locator("#worklist-body tr[data-study-id]")
    assert rows.count() >= 20
    in_view = sum(rows.nth(i).evaluate(IN_VIEW) for i in range(rows.count()))
    page.screenshot(path=str(folder / f"worklist-{width}x{height}.png"))
    assert in_view >= 20, f"{in_view} rows in view at {width}x{height}"
