"""Patient identifiers (name, patient ID, birth date) stay in the database: never in Celery
messages (read raw off a private Redis broker), websocket events, or the log lines of an
upload and its analysis (this process's and the real worker's)."""

from __future__ import annotations

import base64
import json
import logging
import os
from typing import Any

import pytest
import redis
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.web.fixtures import WS_ORIGIN, dicom_bytes, png_bytes, session_cookie_header, upload
from web.asgi import application
from web.clinical.events import WORKLIST_GROUP, events_flush, study_group
from web.clinical.models import Analysis, Patient

pytestmark = pytest.mark.django_db(transaction=True)

NAME = "Zanzibar^Quintessa"
PATIENT_ID = "MRN-PHI-7731"
BIRTH = "19471103"
# Every way these could be written out: DICOM form, ISO date, the name's parts, display order.
IDENTIFIERS = (NAME, "Zanzibar", "Quintessa", PATIENT_ID, "PHI-7731", BIRTH, "1947-11-03", "03/11/1947")


def leaked(text: str) -> list[str]:
    return [needle for needle in IDENTIFIERS if needle.lower() in text.lower()]


def raw_messages(url: str, queue: str) -> list[tuple[str, Any]]:
    """Each message waiting on a queue: as stored in Redis plus its decoded body, and the
    task's first argument (an analysis id, or a list of them)."""
    out = []
    for raw in redis.Redis.from_url(url).lrange(f"{settings.RADTRIAGE_NAMESPACE}.{queue}", 0, -1):
        message = json.loads(raw)
        body = base64.b64decode(message["body"]).decode()
        out.append((raw.decode() + "\n" + body, json.loads(body)[0][0]))
    return out


def test_celery_messages_carry_ids_never_patient_identifiers(api, private_redis, broker_switch) -> None:
    url = f"redis://127.0.0.1:{private_redis[1]}/0"
    broker_switch(url)  # nothing consumes here: every message sent stays to be read

    single = upload(api, dicom_bytes(patient_id=PATIENT_ID, patient_name=NAME, birth_date=BIRTH, seed=71))
    assert single.status_code == 201, single.content
    bulk = api.post(
        "/api/uploads/batch/",
        {
            "files": [SimpleUploadedFile(f"p{i}.png", png_bytes(seed=710 + i)) for i in range(2)],
            "patient_id": PATIENT_ID,
            "patient_name": NAME,
            "birth_date": "1947-11-03",
            "conditions": "pneumonia",
        },
        format="multipart",
    )
    assert bulk.status_code == 201, bulk.content
    assert Patient.objects.get(patient_id=PATIENT_ID).name == NAME  # the data went in...

    messages = raw_messages(url, "interactive") + raw_messages(url, "batch")
    sent = {i for _, arg in messages for i in (arg if isinstance(arg, list) else [arg])}
    analyses = Analysis.objects.filter(image__study__patient__patient_id=PATIENT_ID)
    # ...every analysis was sent as a job, by its id...
    assert sent == set(analyses.values_list("pk", flat=True)) and len(sent) >= 3
    # ...and not one identifier travelled with them.
    assert [leaked(text) for text, _ in messages if leaked(text)] == []


@pytest.mark.slow
def test_an_upload_and_its_analysis_leak_no_identifier_to_events_or_logs(
    live_worker, api, caplog, settings
) -> None:
    # The session's worker reads the session's MEDIA_ROOT (not this web test's own).
    settings.MEDIA_ROOT = os.environ["MEDIA_ROOT"]
    caplog.set_level(logging.DEBUG)
    worker_log_start = len(live_worker.log())
    frames: list[dict[str, Any]] = []
    channel_messages: list[dict[str, Any]] = []

    async def scenario() -> dict[str, Any]:
        layer = get_channel_layer()
        spy = await layer.new_channel()  # the raw channel-layer traffic, before any consumer
        await layer.group_add(WORKLIST_GROUP, spy)
        worklist = WebsocketCommunicator(
            application, "/ws/worklist/", headers=[session_cookie_header(api), WS_ORIGIN]
        )
        assert (await worklist.connect())[0]
        response = await sync_to_async(upload)(
            api, dicom_bytes(patient_id=PATIENT_ID, patient_name=NAME, birth_date=BIRTH, seed=72)
        )
        assert response.status_code == 201, response.content
        body = response.json()
        study = WebsocketCommunicator(
            application,
            f"/ws/studies/{body['study']['id']}/",
            headers=[session_cookie_header(api), WS_ORIGIN],
        )
        assert (await study.connect())[0]
        await layer.group_add(study_group(body["study"]["id"]), spy)
        ids = {a["id"] for a in body["image"]["analyses"]}
        done: set[int] = set()
        while not ids <= done:
            frame = await worklist.receive_json_from(timeout=180)
            frames.append(frame)
            if frame.get("event") in ("finished", "failed"):
                done.add(frame["analysis"]["id"])
        while not await study.receive_nothing(timeout=0.5):
            frames.append(await study.receive_json_from())
        while True:
            try:
                channel_messages.append(await _receive(layer, spy))
            except TimeoutError:
                break
        await worklist.disconnect()
        await study.disconnect()
        return dict(body)

    body = async_to_sync(scenario)()
    events_flush(5)

    # It happened: the worker analysed the upload and the page heard about it.
    assert {f["event"] for f in frames} >= {"finished"}, list(Analysis.objects.values_list("error_message"))
    assert not {f["event"] for f in frames} & {"failed"}
    assert Analysis.objects.filter(image_id=body["image"]["id"], state="succeeded").exists()
    worker_log = live_worker.log()[worker_log_start:]
    assert "worker.tasks.analyze" in worker_log
    assert Patient.objects.get(patient_id=PATIENT_ID).name == NAME

    # No identifier in any websocket frame, any channel-layer message, or any log line.
    assert [leaked(json.dumps(f)) for f in frames if leaked(json.dumps(f))] == []
    assert [leaked(json.dumps(m)) for m in channel_messages if leaked(json.dumps(m))] == []
    assert leaked(caplog.text) == [], caplog.text[-3000:]
    assert leaked(worker_log) == [], worker_log[-3000:]


async def _receive(layer: Any, channel: str) -> dict[str, Any]:
    import asyncio

    return dict(await asyncio.wait_for(layer.receive(channel), timeout=1.0))
