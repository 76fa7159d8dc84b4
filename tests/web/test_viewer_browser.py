"""The study page's viewer in a real browser (Debian's Chromium driven by Playwright) against
uvicorn + a Celery worker: zoom, window, heat map, annotations shared live with a colleague,
a verdict that survives a reload, and a technologist who may look but not annotate.

Screenshots of the viewer are written to the test's tmp_path (printed; run with -s to see it)
in var/test-output/viewer (or $RADTRIAGE_TEST_OUTPUT/viewer)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.output import output_folder
from tests.web.fixtures import dicom_bytes, log_in, new_page, upload, wait_for, web_login_user

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

# What the user sees on the canvas, summarised: a checksum of the pixels, how many are coloured
# (the heat map; the X-ray is grey) and how many are annotation yellow.
CANVAS_LOOK = """c => {
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let sum = 0, coloured = 0, yellow = 0;
  for (let i = 0; i < d.length; i += 4) {
    sum = (sum * 31 + d[i] + 7 * d[i + 1] + 13 * d[i + 2]) % 1000000007;
    if (Math.abs(d[i] - d[i + 2]) > 40) coloured++;
    if (d[i] > 200 && d[i + 1] > 170 && d[i + 2] < 90) yellow++;
  }
  return {sum: sum, coloured: coloured, yellow: yellow};
}"""


@pytest.fixture(autouse=True)
def isolated_media(settings):
    """The web server and the worker are subprocesses: keep the session's MEDIA_ROOT."""
    return settings.MEDIA_ROOT


@pytest.fixture()
def artifacts() -> Path:
    folder = output_folder("viewer")
    print(f"viewer screenshots: {folder}")
    return folder


@pytest.fixture()
def team(django_user_model) -> dict[str, Any]:
    """Two radiologists and a technologist, made before the browser starts (Playwright's loop
    makes the ORM refuse to run after)."""
    from django.contrib.auth.models import Group

    people = {}
    for username, role in (("dr.ada", "radiologist"), ("dr.bo", "radiologist"), ("tech.cy", "technologist")):
        user = web_login_user(django_user_model, username, f"pw-{username}-123")
        user.groups.add(Group.objects.get_or_create(name=role)[0])
        people[username] = user
    return people


@pytest.fixture()
def analysed_study(live_worker, team) -> dict[str, int]:
    """A DICOM study whose real (tiny) pneumonia model finished, with its heat map."""
    from rest_framework.test import APIClient

    from web.clinical.models import Analysis

    client = APIClient()
    client.force_login(team["dr.ada"])
    body = upload(
        client, dicom_bytes(patient_id="MRN-VIEW", patient_name="Lovelace^Ada", size=128, seed=5)
    ).json()
    pneumonia = next(a["id"] for a in body["image"]["analyses"] if a["condition"] == "pneumonia")
    wait_for(
        lambda: Analysis.objects.filter(pk=pneumonia, state="succeeded").exclude(heatmap_raw="").exists(),
        timeout=120,
        what="the pneumonia analysis to finish",
    )
    return {"study": body["study"]["id"], "image": body["image"]["id"], "pneumonia": pneumonia}


def open_study(browser: Any, base_url: str, username: str, study_id: int) -> Any:
    """A fresh browser context: log in, open the study, wait for the image and the socket."""
    from playwright.sync_api import expect

    page = new_page(browser, width=1400, height=900)
    log_in(page, base_url, username, f"pw-{username}-123", next_path=f"/studies/{study_id}/")
    expect(page.locator("h1")).to_contain_text("Ada Lovelace")
    expect(page.locator("canvas.viewer-canvas")).to_have_attribute("data-ready", "1")
    expect(page.locator("#live-status")).to_have_text("live")
    return page


def look(page: Any) -> dict[str, int]:
    return page.locator("canvas.viewer-canvas").evaluate(CANVAS_LOOK)


def drag(page: Any, start: tuple[float, float], end: tuple[float, float], button: str = "left") -> None:
    box = page.locator("canvas.viewer-canvas").bounding_box()
    page.mouse.move(box["x"] + start[0] * box["width"], box["y"] + start[1] * box["height"])
    page.mouse.down(button=button)
    for step in range(1, 6):
        f = step / 5
        x = start[0] + (end[0] - start[0]) * f
        y = start[1] + (end[1] - start[1]) * f
        page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"])
    page.mouse.up(button=button)


def test_a_radiologist_zooms_windows_and_toggles_the_heat_map(
    live_server_url,
    analysed_study,
    chromium,
    artifacts,
) -> None:
    from playwright.sync_api import expect

    page = open_study(chromium, live_server_url, "dr.ada", analysed_study["study"])
    canvas = page.locator("canvas.viewer-canvas")
    # The real model's map is shown; the placeholder's is offered, labelled as such.
    expect(page.locator(".heat-source option")).to_have_count(2)
    expect(page.locator(".heat-source option", has_text="placeholder")).to_contain_text("cardiomegaly")
    assert "pneumonia" in page.locator(".heat-source").evaluate("s => s.selectedOptions[0].textContent")
    wait_for(lambda: look(page)["coloured"] > 500, timeout=30, what="the heat map drawn over the X-ray")
    page.screenshot(path=str(artifacts / "viewer-fit-heat.png"))

    # The heat map: H hides it (only grey left), H shows it again; the slider fades it.
    canvas.focus()
    page.keyboard.press("h")
    expect(canvas).to_have_attribute("data-heat", "off")
    grey = look(page)
    assert grey["coloured"] == 0
    page.keyboard.press("h")
    wait_for(lambda: look(page)["coloured"] > 500, timeout=10, what="the heat map back")
    strong = look(page)
    page.locator("#heat-intensity").fill("0")
    wait_for(lambda: look(page)["coloured"] == 0, timeout=10, what="the heat map faded out at 0 %")
    page.locator("#heat-intensity").fill("40")
    assert look(page)["sum"] == strong["sum"]

    # Zoom in with the wheel over the image: the picture grows and changes.
    before_scale = float(canvas.get_attribute("data-scale"))
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -600)
    wait_for(
        lambda: float(canvas.get_attribute("data-scale")) > before_scale * 1.5, timeout=10, what="a zoom"
    )
    zoomed = look(page)
    assert zoomed["sum"] != strong["sum"]
    # Pan: the drag moves the image.
    pan_before = canvas.get_attribute("data-pan")
    drag(page, (0.5, 0.5), (0.3, 0.4))
    assert canvas.get_attribute("data-pan") != pan_before
    page.screenshot(path=str(artifacts / "viewer-zoomed.png"))

    # Window/level by dragging with the Window tool: other numbers, other grey levels.
    page.keyboard.press("h")  # heat map off, to compare the X-ray alone
    page.click("[data-tool=window]")
    window_before = canvas.get_attribute("data-window")
    grey_before = look(page)["sum"]
    drag(page, (0.5, 0.5), (0.2, 0.7))
    assert canvas.get_attribute("data-window") != window_before
    assert look(page)["sum"] != grey_before
    expect(page.locator(".wl-readout")).to_have_text(re.compile(r"^W \d+ / L -?\d+$"))
    page.screenshot(path=str(artifacts / "viewer-windowed.png"))
    # A preset and then Reset (0): back to the fitted view and the header's window.
    page.select_option(".wl-preset", "full")
    assert canvas.get_attribute("data-window") != window_before
    canvas.focus()
    page.keyboard.press("0")
    assert canvas.get_attribute("data-window") == window_before
    assert float(canvas.get_attribute("data-scale")) == pytest.approx(before_scale, rel=1e-3)


def test_annotations_persist_are_shared_live_and_only_their_author_changes_them(
    live_server_url,
    analysed_study,
    chromium,
    artifacts,
) -> None:
    from playwright.sync_api import expect

    ada = open_study(chromium, live_server_url, "dr.ada", analysed_study["study"])
    bo = open_study(chromium, live_server_url, "dr.bo", analysed_study["study"])
    for page in (ada, bo):
        page.locator(".heat-toggle").uncheck()  # annotations alone on the grey X-ray
    assert look(ada)["yellow"] == 0

    # Ada draws a rectangle with a note; it is on her image and in the list, and after a reload.
    ada.click("[data-tool=rect]")
    ada.fill(".note-input", "left base opacity")
    drag(ada, (0.4, 0.4), (0.6, 0.55))
    own = ada.locator(".annotation-list li.own")
    expect(own).to_have_count(1)
    expect(own).to_contain_text("dr.ada · rectangle left base opacity")
    wait_for(lambda: look(ada)["yellow"] > 50, timeout=10, what="the rectangle drawn")
    ada.screenshot(path=str(artifacts / "viewer-annotated.png"))
    # Bo sees it appear without reloading, as a colleague's (no edit/delete for him).
    theirs = bo.locator(".annotation-list li", has_text="dr.ada")
    expect(theirs).to_contain_text("left base opacity")
    expect(theirs.locator("button")).to_have_count(0)

    ada.reload()
    expect(ada.locator("canvas.viewer-canvas")).to_have_attribute("data-ready", "1")
    expect(own).to_contain_text("dr.ada · rectangle left base opacity")

    # Ada edits her note. While she types, Bo draws an ellipse: it appears on Ada's open page
    # (which offers her no way to delete it), and the live update keeps what she has typed.
    own.locator("button.edit").click()
    own.locator("input.edit-note").fill("left base consolidation")
    bo.click("[data-tool=ellipse]")
    drag(bo, (0.2, 0.2), (0.3, 0.35))
    from_bo = ada.locator(".annotation-list li", has_text="dr.bo")
    expect(from_bo).to_contain_text("ellipse")
    expect(from_bo.locator("button.delete")).to_have_count(0)
    expect(own.locator("input.edit-note")).to_have_value("left base consolidation")
    own.locator("button.save").click()
    expect(own).to_contain_text("left base consolidation")
    expect(own.locator("input.edit-note")).to_have_count(0)
    expect(theirs).to_contain_text("left base consolidation")
    status = ada.evaluate(
        """async (id) => (await fetch(`/api/annotations/${id}/`, {method: "DELETE",
             headers: {"X-CSRFToken": radtriageCsrf()}})).status""",
        int(from_bo.get_attribute("data-annotation-id")),
    )
    assert status == 403

    # Ada deletes her own: gone on both pages.
    own.locator("button.delete").click()
    expect(own).to_have_count(0)
    expect(theirs).to_have_count(0)
    expect(bo.locator(".annotation-list li", has_text="dr.bo")).to_have_count(1)


def test_a_radiologist_disagrees_with_a_finding_and_the_verdict_is_kept(
    live_server_url,
    analysed_study,
    chromium,
) -> None:
    from playwright.sync_api import expect

    colleague = open_study(chromium, live_server_url, "dr.bo", analysed_study["study"])
    page = open_study(chromium, live_server_url, "dr.ada", analysed_study["study"])
    card = page.locator(".analysis", has_text="pneumonia")
    expect(card.locator(".verdict-reason")).to_be_hidden()
    card.locator("input[value=disagree]").check()
    expect(card.locator(".verdict-reason")).to_be_visible()  # disagreeing asks why
    card.locator("select[name=reason]").select_option("false_positive")
    card.locator("input[name=comment]").fill("rib overlap, not consolidation")
    card.locator(".verdict-form button[type=submit]").click()
    said = "dr.ada: Disagree (False positive: no such finding) — rib overlap, not consolidation"
    expect(card.locator(".verdicts")).to_have_text(said)
    # The colleague with the study open sees it without reloading.
    expect(colleague.locator(".analysis", has_text="pneumonia").locator(".verdicts")).to_have_text(said)

    page.reload()
    expect(card.locator(".verdicts")).to_have_text(said)
    expect(card.locator("input[value=disagree]")).to_be_checked()
    expect(card.locator(".verdict-form button[type=submit]")).to_have_text("Change verdict")


def test_a_technologist_sees_the_image_but_has_no_annotation_tools(
    live_server_url,
    analysed_study,
    chromium,
) -> None:
    from playwright.sync_api import expect

    page = open_study(chromium, live_server_url, "tech.cy", analysed_study["study"])
    expect(page.locator("[data-tool=pan]")).to_be_visible()
    expect(page.locator(".annotate-tools")).to_have_count(0)
    expect(page.locator(".verdict-form")).to_have_count(0)
    expect(page.locator(".rerun-form")).to_have_count(0)
    status = page.evaluate(
        """async (imageId) => (await fetch(`/api/images/${imageId}/annotations/`, {method: "POST",
             headers: {"Content-Type": "application/json", "X-CSRFToken": radtriageCsrf()},
             body: JSON.stringify({shapes: [{type: "rect", x: 1, y: 1, w: 5, h: 5}]})})).status""",
        analysed_study["image"],
    )
    assert status == 403
    # Keys for drawing do nothing for them: the canvas stays in pan mode.
    page.locator("canvas.viewer-canvas").focus()
    page.keyboard.press("r")
    expect(page.locator("canvas.viewer-canvas")).to_have_attribute("data-mode", "pan")
