"""The viewer's Angle tool in Chromium at 1440x900 and 1920x1080, on a DICOM whose rows and
columns are spaced differently: the degrees shown while drawing, the annotation list and the
API agree, in physical space; three clicks or a drag and a click; on a turned and flipped image
too. Screenshots in var/test-output/layout/."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.output import output_folder
from tests.web.test_viewer_browser import (  # noqa: F401 - fixtures
    isolated_media,
    open_study,
    team,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SCREENS = [(1440, 900), (1920, 1080)]
# 45° on the pixel grid is atan(0.2 / 0.1) = 63.4° in the patient: rows 0.2 mm apart, columns 0.1.
PHYSICAL = re.compile(r"^6[34]\.\d°$")


@pytest.fixture()
def anisotropic_study(live_worker, team) -> dict[str, int]:  # noqa: F811
    """A 512 x 512 DICOM whose header gives 0.2 mm between rows and 0.1 mm between columns."""
    from rest_framework.test import APIClient

    from tests.web.fixtures import dicom_bytes, upload

    client = APIClient()
    client.force_login(team["dr.ada"])
    body = upload(
        client,
        dicom_bytes(patient_id="MRN-ANGLE", patient_name="Lovelace^Ada", size=512, pixel_spacing=(0.2, 0.1)),
        conditions="pneumonia",
    ).json()
    return {"study": body["study"]["id"], "image": body["image"]["id"]}


@pytest.mark.parametrize(("width", "height"), SCREENS)
def test_the_angle_tool_shows_the_physical_angle_while_drawing_and_saves_it(
    live_server_url,
    anisotropic_study,
    chromium,
    width: int,
    height: int,
) -> None:
    from playwright.sync_api import expect

    page: Any = open_study(chromium, live_server_url, "dr.ada", anisotropic_study["study"])
    page.set_viewport_size({"width": width, "height": height})
    page.wait_for_timeout(300)
    page.locator(".heat-toggle").uncheck()
    canvas = page.locator("canvas.viewer-canvas")
    box = canvas.bounding_box()
    scale = float(canvas.get_attribute("data-scale"))
    tx, ty = (float(v) for v in canvas.get_attribute("data-pan").split(","))

    def on_screen(ix: float, iy: float) -> tuple[float, float]:
        return box["x"] + tx + ix * scale, box["y"] + ty + iy * scale

    # Three clicks, chosen with the key: the first ray's end, the vertex, the second ray's end.
    canvas.focus()
    page.keyboard.press("n")
    expect(canvas).to_have_attribute("data-mode", "angle")
    page.mouse.click(*on_screen(406, 356))
    page.mouse.click(*on_screen(156, 356))
    page.mouse.move(*on_screen(356, 156), steps=6)
    # Live, before the third click: the angle in the patient, not the grid's 45°.
    expect(canvas).to_have_attribute("data-measuring", PHYSICAL)
    page.screenshot(path=str(output_folder("layout") / f"angle-drawing-{width}x{height}.png"))
    page.mouse.click(*on_screen(356, 156))
    expect(canvas).to_have_attribute("data-measuring", "")
    first = page.locator(".annotation-list li.annotation").first
    expect(first).to_contain_text(re.compile(r"angle 6[34]\.\d°"))
    shown = float(re.search(r"angle (\d+\.\d)°", first.inner_text()).group(1))
    saved = page.evaluate(
        "url => fetch(url, {credentials: 'same-origin'}).then(r => r.json())",
        f"/api/images/{anisotropic_study['image']}/annotations/",
    )[0]
    assert saved["shapes"][0]["type"] == "angle" and len(saved["shapes"][0]["points"]) == 3
    measured = saved["measurements"][0]
    assert (measured["kind"], measured["unit"], measured["calibrated"]) == ("angle", "deg", True)
    assert measured["value"] == pytest.approx(63.4, abs=0.6) and measured["value"] == shown

    # Turned a quarter and flipped: a drag for the first ray, a click for the second, at a right
    # angle on the screen, which is one between a row and a column of the image: 90° there too.
    page.keyboard.press("o")
    page.keyboard.press("x")
    expect(canvas).to_have_attribute("data-orientation", "90 flipped")
    turned = float(canvas.get_attribute("data-scale"))
    centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    reach = 150 * turned
    page.click("[data-tool=angle]")
    page.mouse.move(centre[0] + reach, centre[1])
    page.mouse.down()
    page.mouse.move(centre[0] + reach / 2, centre[1], steps=4)
    page.mouse.move(*centre, steps=4)
    page.mouse.up()
    page.mouse.move(centre[0], centre[1] - reach, steps=6)
    expect(canvas).to_have_attribute("data-measuring", re.compile(r"^(89\.\d|90\.[0-9])°$"))
    page.mouse.click(centre[0], centre[1] - reach)
    second = page.locator(".annotation-list li.annotation").nth(1)
    expect(second).to_contain_text(re.compile(r"angle (89\.[5-9]|90\.[0-5])°"))
    page.screenshot(path=str(output_folder("layout") / f"angle-{width}x{height}.png"))
    # Escape abandons an angle half drawn: nothing is saved.
    page.mouse.click(centre[0] - 50, centre[1])
    page.keyboard.press("Escape")
    expect(canvas).to_have_attribute("data-mode", "pan")
    page.wait_for_timeout(300)
    expect(page.locator(".annotation-list li.annotation")).to_have_count(2)
