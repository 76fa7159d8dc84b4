"""A batch of ~50 generated images (plus corrupt and hostile members) through the real Celery
worker: the page's websocket gets the batch's progress in order, ending at 100%."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Group

from tests.web.fixtures import WS_ORIGIN, session_cookie_header
from tests.web.test_batches import hostile_archive, post_archive
from web.asgi import application
from web.clinical.models import Analysis, Batch

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

JOB_TIMEOUT = 180


def test_a_batch_reports_its_progress_in_order_until_100_percent(
    live_worker, api, radiologist, settings
) -> None:
    from django.utils import timezone

    from web.clinical.batches.batches import batches_start_due

    radiologist.groups.add(Group.objects.get_or_create(name="radiologist")[0])
    now = timezone.localtime()
    # A night window around the present, so the real worker's progress has a real clock.
    settings.RADTRIAGE_NIGHT_WINDOW = (
        f"{now - dt.timedelta(hours=1):%H:%M}-{now + dt.timedelta(hours=1):%H:%M}"
    )
    archive, _ = hostile_archive(50)
    # Overnight, so that the page is watching before the first job runs.
    body = post_archive(api, archive, conditions="pneumonia", overnight="true").json()
    assert (body["accepted"], body["duplicates"], len(body["refused"])) == (50, 1, 6)
    batch_id = body["batch"]

    async def scenario() -> list[dict[str, Any]]:
        page = WebsocketCommunicator(
            application, f"/ws/batches/{batch_id}/", headers=[session_cookie_header(api), WS_ORIGIN]
        )
        assert (await page.connect())[0]
        started = await sync_to_async(batches_start_due)()
        assert started == [batch_id]
        events: list[dict[str, Any]] = []
        while not events or events[-1]["percent"] < 100:
            frame = await page.receive_json_from(timeout=JOB_TIMEOUT)
            assert frame["type"] == "batch"
            events.append(frame["progress"])
        await page.disconnect()
        return events

    events = async_to_sync(scenario)()

    done = [e["done"] for e in events]
    assert done == sorted(done) and len(set(done)) >= 2  # in order, and more than one step
    last = events[-1]
    assert (last["done"], last["total"], last["failed"], last["percent"]) == (50, 50, 0, 100.0)
    assert last["state"] == "done" and last["eta_seconds"] is None
    assert any(e["eta_seconds"] > 0 for e in events[:-1] if 0 < e["done"] < 50)
    assert Analysis.objects.filter(batch_id=batch_id, state="succeeded").count() == 50
    assert Batch.objects.get(pk=batch_id).finished_at is not None
    # The summary the page then shows.
    summary = api.get(f"/api/batches/{batch_id}/").json()
    assert summary["analyses_done"] == 50 and summary["failures"] == []
    assert set(summary["positives"]) == {"pneumonia"}
