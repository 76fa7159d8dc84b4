"""The reading layout in Chromium at the two screens radiologists use most, 1440x900 (a
laptop) and 1920x1080: at least 20 worklist rows in view without scrolling, and on the study
page the whole image (the canvas) and its AI result card in view without scrolling. Screenshots
in var/test-output/layout/."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.output import output_folder
from tests.web.test_browser import _in_thread
from tests.web.test_viewer_browser import (  # noqa: F401 - fixtures
    analysed_study,
    isolated_media,
    look,
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
    live_server_url,
    analysed_study,  # noqa: F811
    chromium,
    width: int,
    height: int,
) -> None:
    _in_thread(lambda: _more_studies(24))
    folder = output_folder("layout")
    page: Any = open_study(chromium, live_server_url, "dr.ada", analysed_study["study"])
    page.set_viewport_size({"width": width, "height": height})
    page.wait_for_timeout(300)  # the viewer refits the image to the new size

    canvas = page.locator("canvas.viewer-canvas")
    card = page.locator(".analysis").first
    # The finding's heat map with its hot region outlined and boxed, and the legend saying so.
    from playwright.sync_api import expect

    expect(card).to_have_class(re.compile(r"\bfinding\b"))
    expect(canvas).to_have_attribute("data-region", "on")
    expect(page.locator(".heat-legend .region-key")).to_be_visible()
    page.screenshot(path=str(folder / f"study-{width}x{height}.png"))
    assert canvas.evaluate(IN_VIEW), canvas.bounding_box()
    assert card.evaluate(IN_VIEW), card.bounding_box()
    assert page.evaluate("document.scrollingElement.scrollTop") == 0

    # The DICOM header, one fold away; then ] and [ walk the worklist's order.
    page.locator(".dicom-header summary").click()
    expect(page.locator(".dicom-header")).to_contain_text("Modality")
    canvas.focus()
    page.keyboard.press("]")
    expect(page.locator("h1")).to_contain_text("Row")
    page.keyboard.press("[")
    expect(page.locator("h1")).to_contain_text("Ada Lovelace")

    page.goto(live_server_url + "/")
    rows = page.locator("#worklist-body tr[data-study-id]")
    assert rows.count() >= 20
    in_view = sum(rows.nth(i).evaluate(IN_VIEW) for i in range(rows.count()))
    page.screenshot(path=str(folder / f"worklist-{width}x{height}.png"))
    assert in_view >= 20, f"{in_view} rows in view at {width}x{height}"


@pytest.fixture()
def calibrated_study(live_worker, team) -> dict[str, int]:  # noqa: F811
    """A 512 x 512 DICOM whose header gives 0.2 mm pixels."""
    from rest_framework.test import APIClient

    from tests.web.fixtures import dicom_bytes, upload

    client = APIClient()
    client.force_login(team["dr.ada"])
    body = upload(
        client,
        dicom_bytes(patient_id="MRN-RULER", patient_name="Lovelace^Ada", size=512, pixel_spacing=(0.2, 0.2)),
        conditions="pneumonia",
    ).json()
    return {"study": body["study"]["id"], "image": body["image"]["id"]}


@pytest.mark.parametrize(("width", "height"), SCREENS)
def test_the_length_tool_measures_a_known_distance_in_millimetres(
    live_server_url,
    calibrated_study,
    chromium,
    width: int,
    height: int,
) -> None:
    from playwright.sync_api import expect

    page: Any = open_study(chromium, live_server_url, "dr.ada", calibrated_study["study"])
    page.set_viewport_size({"width": width, "height": height})
    page.wait_for_timeout(300)
    canvas = page.locator("canvas.viewer-canvas")
    box = canvas.bounding_box()
    scale = float(canvas.get_attribute("data-scale"))
    tx, ty = (float(v) for v in canvas.get_attribute("data-pan").split(","))

    def on_screen(ix: float, iy: float) -> tuple[float, float]:
        return box["x"] + tx + ix * scale, box["y"] + ty + iy * scale

    # 400 image pixels x 0.2 mm = 80 mm.
    page.click("[data-tool=length]")
    page.mouse.move(*on_screen(56, 256))
    page.mouse.down()
    for step in range(1, 9):
        page.mouse.move(*on_screen(56 + 50 * step, 256))
    page.mouse.up()

    item = page.locator(".annotation-list li.annotation").first
    expect(item).to_contain_text(re.compile(r"length (79\.[5-9]|80\.[0-4]) mm"))

    # Turned a quarter and flipped, the same 80 mm along the image's rows now runs up the screen.
    canvas.focus()
    page.keyboard.press("o")
    page.keyboard.press("x")
    expect(canvas).to_have_attribute("data-orientation", "90 flipped")
    turned = float(canvas.get_attribute("data-scale"))
    centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.click("[data-tool=length]")
    page.mouse.move(centre[0], centre[1] - 200 * turned)
    page.mouse.down()
    for step in range(1, 9):
        page.mouse.move(centre[0], centre[1] - 200 * turned + 50 * turned * step)
    page.mouse.up()
    expect(page.locator(".annotation-list li.annotation")).to_have_count(2)
    expect(page.locator(".annotation-list li.annotation").nth(1)).to_contain_text(
        re.compile(r"length (79\.[5-9]|80\.[0-4]) mm")
    )
    page.keyboard.press("0")
    expect(canvas).to_have_attribute("data-orientation", "0")

    # A finding the AI missed: its condition chosen, then outlined where it is.
    page.select_option(".missed-condition", "pneumonia")
    page.click("[data-tool=rect]")
    page.mouse.move(*on_screen(100, 100))
    page.mouse.down()
    for step in range(1, 6):
        page.mouse.move(*on_screen(100 + 20 * step, 100 + 16 * step))
    page.mouse.up()
    expect(page.locator(".annotation-list li.annotation")).to_have_count(3)
    expect(page.locator(".annotation-list")).to_contain_text("AI missed pneumonia: rectangle")
    expect(page.locator(".missed-condition")).to_have_value("")

    # The results fold away and the image takes the width; they come back.
    narrow = canvas.bounding_box()["width"]
    page.click(".fold-results")
    expect(page.locator("section.image .side")).to_be_hidden()
    page.wait_for_function(
        "w => document.querySelector('canvas.viewer-canvas').clientWidth > w + 200", arg=narrow
    )
    page.click(".fold-results")
    expect(page.locator("section.image .side")).to_be_visible()

    # The magnifier (G): a lens over the image where the pointer is, and gone when off.
    page.wait_for_timeout(300)
    box = canvas.bounding_box()
    centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    canvas.focus()
    page.mouse.move(*centre)
    plain = look(page)
    page.keyboard.press("g")
    expect(canvas).to_have_attribute("data-magnifier", "on")
    page.mouse.move(centre[0] + 1, centre[1])
    page.mouse.move(*centre)
    lens = look(page)
    assert lens["sum"] != plain["sum"]
    page.keyboard.press("g")
    expect(canvas).to_have_attribute("data-magnifier", "off")
    assert look(page)["sum"] == plain["sum"]
    page.screenshot(path=str(output_folder("layout") / f"length-{width}x{height}.png"))
    measured = page.evaluate(
        "url => fetch(url, {credentials: 'same-origin'}).then(r => r.json())",
        f"/api/images/{calibrated_study['image']}/annotations/",
    )[0]["measurements"][0]
    assert measured["unit"] == "mm" and measured["calibrated"] is True
    assert measured["value"] == pytest.approx(80.0, abs=0.5)


def test_a_radiologist_sorts_by_a_column_and_saves_the_view(
    live_server_url,
    analysed_study,  # noqa: F811
    chromium,
) -> None:
    from playwright.sync_api import expect

    _in_thread(lambda: _more_studies(3))
    page: Any = open_study(chromium, live_server_url, "dr.ada", analysed_study["study"])
    page.goto(live_server_url + "/")
    first = page.locator("#worklist-body tr[data-study-id]").first

    page.click("thead a.sort:text-is('Patient')")
    expect(first).to_contain_text("Ada Lovelace")  # Lovelace^Ada before Row^…
    expect(page.locator("thead th[aria-sort=ascending]")).to_contain_text("Patient")
    page.click("thead a.sort:has-text('Patient')")
    expect(first).to_contain_text("Patient 02 Row")
    expect(page.locator("thead th[aria-sort=descending]")).to_contain_text("Patient")

    page.fill("#view-name", "Names Z-A")
    page.click("#save-view")
    page.goto(live_server_url + "/")
    expect(first).to_contain_text("Ada Lovelace")  # the triage order again: the finding first
    page.select_option("#saved-views", label="Names Z-A")
    expect(page).to_have_url(re.compile(r"sort=-patient"))
    expect(first).to_contain_text("Patient 02 Row")
