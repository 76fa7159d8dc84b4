"""Live events over the real Redis channel layer: bursts travel as one channel message (each
message costs the web process that forwards it ~1 ms) and still reach the page one by one."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from tests.web.fixtures import WS_ORIGIN, session_cookie_header
from web.asgi import application
from web.clinical.events import (
    EVENT_TYPE,
    EVENTS_TYPE,
    WORKLIST_GROUP,
    _publisher,
    events_flush,
)

pytestmark = pytest.mark.django_db(transaction=True)


def event(analysis_id: int, name: str = "queued") -> dict[str, Any]:
    return {"type": EVENT_TYPE, "event": name, "analysis": {"id": analysis_id, "study_id": 7}}


def test_a_burst_reaches_the_page_one_frame_per_event_in_order(api) -> None:
    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        layer = get_channel_layer()
        spy = await layer.new_channel()  # sees the raw channel traffic of the group
        await layer.group_add(WORKLIST_GROUP, spy)
        page = WebsocketCommunicator(
            application, "/ws/worklist/", headers=[session_cookie_header(api), WS_ORIGIN]
        )
        assert (await page.connect())[0]
        for i in range(50):  # as a bulk upload's commit sends its "queued" events
            _publisher.send([WORKLIST_GROUP], event(i))
        frames = [await page.receive_json_from(timeout=10) for _ in range(50)]
        messages = []
        while sum(len(m.get("events", [m])) for m in messages) < 50:
            messages.append(await layer.receive(spy))
        await page.disconnect()
        await layer.group_discard(WORKLIST_GROUP, spy)
        return frames, messages

    frames, messages = async_to_sync(scenario)()
    assert events_flush(5)

    assert [f["analysis"]["id"] for f in frames] == list(range(50))
    assert {(f["type"], f["event"]) for f in frames} == {("analysis", "queued")}
    # Far fewer channel messages than events: the burst was combined.
    assert len(messages) < 10 and any(m["type"] == EVENTS_TYPE for m in messages)


def test_a_combined_message_from_elsewhere_is_unpacked_for_the_page(api) -> None:
    async def scenario() -> list[dict[str, Any]]:
        page = WebsocketCommunicator(
            application, "/ws/worklist/", headers=[session_cookie_header(api), WS_ORIGIN]
        )
        assert (await page.connect())[0]
        await get_channel_layer().group_send(
            WORKLIST_GROUP,
            {
                "type": EVENTS_TYPE,
                "events": [
                    {"event": "started", "analysis": {"id": 1}},
                    {"event": "finished", "analysis": {"id": 1}},
                ],
            },
        )
        frames = [await page.receive_json_from(timeout=10) for _ in range(2)]
        await page.disconnect()
        return frames

    assert [(f["event"], f["analysis"]["id"]) for f in async_to_sync(scenario)()] == [
        ("started", 1),
        ("finished", 1),
    ]
