"""The batch page in Chromium at 1440x900, for a batch part done and part queued: positives per
condition and a progress bar with the time left while it runs, the duplicate files named, and
a result that arrives updating the page live. Screenshot in var/test-output/batch/."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from django.utils import timezone

from tests.output import output_folder
from tests.web.fixtures import log_in, new_page
from tests.web.test_batch_summary import analysis, running_batch, stored_image
from tests.web.test_browser import _in_thread
from tests.web.test_viewer_browser import isolated_media, team  # noqa: F401 - fixtures
from web.clinical.models import Analysis, BatchItem

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture()
def half_done_batch(team) -> dict[str, Any]:  # noqa: F811
    """Ten analyses: five ended in the last minutes (three pneumonia findings, a negative, a
    fracture finding), five queued; one file was a duplicate of the first."""
    now = timezone.now()
    batch = running_batch(started=now - dt.timedelta(minutes=10), files=8)
    images = [stored_image(f"scans/{i:03}.dcm") for i in range(7)]
    for i, result in enumerate(["finding", "finding", "finding", "negative", "queued", "queued", "queued"]):
        analysis(images[i], batch, "pneumonia", result, finished=now - dt.timedelta(minutes=6 - i))
    analysis(images[0], batch, "fracture", "finding", finished=now - dt.timedelta(minutes=2))
    queued = [analysis(images[i], batch, "fracture", "queued").pk for i in (1, 2)]
    for i, image in enumerate(images):
        BatchItem.objects.create(
            batch=batch, position=i, filename=image.original_filename, status="accepted", image=image
        )
    BatchItem.objects.create(
        batch=batch, position=7, filename="copy-of-first.dcm", status="duplicate", image=images[0]
    )
    type(batch).objects.filter(pk=batch.pk).update(accepted=7, duplicates=1)
    return {"batch": batch.pk, "queued_fracture": queued[0], "study": images[0].study_id}


def test_the_batch_page_shows_positives_and_time_left_while_it_runs_and_updates_live(
    live_server_url,
    half_done_batch,
    chromium,
) -> None:
    from playwright.sync_api import expect

    page = new_page(chromium, timeout_ms=30_000)
    log_in(
        page, live_server_url, "dr.ada", "pw-dr.ada-123", next_path=f"/batches/{half_done_batch['batch']}/"
    )
    expect(page.locator("#live-status")).to_have_text("live")

    positives = page.locator("#batch-positives")
    expect(positives.locator("li[data-condition=pneumonia]")).to_have_text("pneumonia: 3")
    expect(positives.locator("li[data-condition=fracture]")).to_have_text("fracture: 1")
    expect(page.locator("#batch-positives-when")).to_have_text("so far")
    bar = page.locator("#batch-bar")
    assert (bar.get_attribute("value"), bar.get_attribute("max")) == ("5", "10")
    expect(page.locator("#batch-count")).to_contain_text("5 / 10 analyses ended")
    # 5 ended in the 10 minutes since the start: 0.5 a minute, 5 left: about 10 minutes.
    expect(page.locator("#batch-eta")).to_have_text(re.compile(r"^about 1[01] min left$"))
    duplicate = page.locator("#batch-duplicates li")
    expect(duplicate).to_have_count(1)
    expect(duplicate).to_contain_text("copy-of-first.dcm: already stored as scans/000.dcm")
    assert duplicate.locator("a").get_attribute("href") == f"/studies/{half_done_batch['study']}/"
    for name in ("#batch-bar", "#batch-eta", "#batch-positives"):
        box = page.locator(name).bounding_box()
        assert box and box["y"] + box["height"] <= 900, name
    page.screenshot(path=str(output_folder("batch") / "batch-running-1440x900.png"))

    # A worker ends a job with a fracture finding: the page counts it without a reload.
    def another_finding() -> None:
        from web.clinical.batches.batches import batch_refresh

        Analysis.objects.filter(pk=half_done_batch["queued_fracture"]).update(
            state="succeeded",
            positive=True,
            applicable=True,
            probability=0.8,
            threshold=0.5,
            finished_at=timezone.now(),
        )
        batch_refresh(batch_id=half_done_batch["batch"])

    _in_thread(another_finding)
    expect(positives.locator("li[data-condition=fracture]")).to_have_text("fracture: 2")
    expect(page.locator("#batch-count")).to_contain_text("6 / 10 analyses ended")
    # 6 in 10 minutes, 4 left: about 7 minutes.
    expect(page.locator("#batch-eta")).to_have_text(re.compile(r"^about [78] min left$"))
    assert bar.get_attribute("value") == "6"
