"""Bulk uploads analysed in batches: a real Celery worker with the tiny real Keras model, and
the batch service run in this process to prove one bad image never sinks the others."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator

from tests.web.fixtures import (
    WS_ORIGIN,
    celery_worker,
    dicom_bytes,
    service_env,
    session_cookie_header,
    upload,
    wait_for,
)
from tests.web.test_bulk_upload_api import bulk_upload
from web.asgi import application
from web.clinical.models import Analysis, AuditEvent

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

JOB_TIMEOUT = 120


def test_a_bulk_upload_is_analysed_in_batches_and_each_result_reaches_the_browser(live_worker, api) -> None:
    files = [(f"{i}.dcm", dicom_bytes(patient_id=f"MRN-BATCH{i}", seed=70 + i)) for i in range(5)]
    finished: dict[int, dict[str, Any]] = {}

    async def scenario() -> dict[str, Any]:
        communicator = WebsocketCommunicator(
            application, "/ws/worklist/", headers=[session_cookie_header(api), WS_ORIGIN]
        )
        assert (await communicator.connect())[0]
        response = await sync_to_async(bulk_upload)(api, files, conditions="pneumonia")
        assert response.status_code == 201, response.content
        ids = {a["id"] for r in response.json()["results"] for a in r["analyses"]}
        while not ids <= finished.keys():
            event = await communicator.receive_json_from(timeout=JOB_TIMEOUT)
            if event["event"] in ("finished", "failed"):
                finished[event["analysis"]["id"]] = event
        await communicator.disconnect()
        return response.json()

    body = async_to_sync(scenario)()

    ids = [a["id"] for r in body["results"] for a in r["analyses"]]
    assert len(ids) == 5 and {finished[i]["event"] for i in ids} == {"finished"}
    rows = {a.pk: a for a in Analysis.objects.filter(pk__in=ids)}
    assert all(
        a.state == "succeeded"
        and a.model_id == "pneumonia-tiny-test"
        and a.heatmap_raw
        and a.queue == "batch"
        for a in rows.values()
    )
    # The five went to the worker as one job: one model call for all of them.
    assert live_worker.log().count("worker.tasks.analyze_batch[") >= 2  # received + succeeded
    assert len({a.started_at for a in rows.values()}) == 1

    # Batching changes no result: the same pixels uploaded alone get the same probability.
    single = upload(api, dicom_bytes(patient_id="MRN-ALONE", seed=72), conditions="pneumonia")
    alone_id = single.json()["image"]["analyses"][0]["id"]
    alone = wait_for(
        lambda: Analysis.objects.filter(pk=alone_id, state="succeeded").first(),
        timeout=JOB_TIMEOUT,
        what="the single upload",
    )
    assert alone.probability == pytest.approx(rows[ids[2]].probability, abs=1e-5)


def test_one_unreadable_image_fails_alone_and_the_rest_of_its_batch_succeeds(
    api, private_redis, broker_switch, tiny_registry, settings
) -> None:
    from web.clinical.analysis.jobs import analyses_run

    # Rows made through the API, with the jobs parked on a broker no worker reads.
    broker_switch(f"redis://127.0.0.1:{private_redis[1]}/0")
    settings.RADTRIAGE_REGISTRY = tiny_registry
    response = bulk_upload(
        api,
        [(f"{i}.dcm", dicom_bytes(patient_id=f"MRN-ISO{i}", seed=80 + i)) for i in range(3)],
        conditions="pneumonia",
    )
    ids = [a["id"] for r in response.json()["results"] for a in r["analyses"]]
    lost = Analysis.objects.select_related("image").get(pk=ids[1])
    Path(lost.image.file.path).unlink()  # the disk lost one file

    analyses_run(analysis_ids=ids, worker="test")

    first, second, third = (Analysis.objects.get(pk=i) for i in ids)
    assert first.state == third.state == "succeeded" and first.heatmap_raw and third.heatmap_raw
    assert second.state == "failed" and "missing" in second.error_message
    assert not second.heatmap_raw and second.probability is None
    assert AuditEvent.objects.filter(action="analysis.succeeded").count() == 2

    # Delivered again (lost ack): nothing is run or written twice.
    analyses_run(analysis_ids=ids, worker="test")
    again = [Analysis.objects.get(pk=i) for i in ids]
    assert [a.finished_at for a in again] == [first.finished_at, second.finished_at, third.finished_at]
    assert [a.attempts for a in again] == [1, 1, 1]
    assert AuditEvent.objects.filter(action="analysis.succeeded").count() == 2
    heatmaps = sorted(
        p.name
        for p in Path(first.heatmap_raw.path).parents[1].rglob("*.png")
        if any(p.name.startswith(f"analysis-{i}-") for i in ids)
    )
    assert heatmaps == sorted([f"analysis-{ids[0]}-raw.png", f"analysis-{ids[2]}-raw.png"])


def test_a_single_upload_is_served_before_a_bulk_backlog(
    api, private_redis, broker_switch, tiny_registry, service_logs, settings
) -> None:
    # Jobs wait on a broker of our own while no worker runs: a bulk import of three jobs of
    # two images each, then one image a person uploads and waits for.
    url = f"redis://127.0.0.1:{private_redis[1]}/0"
    broker_switch(url)
    settings.ANALYSIS_BATCH_SIZE = 2
    bulk = bulk_upload(
        api,
        [(f"{i}.dcm", dicom_bytes(patient_id=f"MRN-BACKLOG{i}", seed=90 + i)) for i in range(6)],
        conditions="pneumonia",
    )
    bulk_ids = [a["id"] for r in bulk.json()["results"] for a in r["analyses"]]
    single = upload(api, dicom_bytes(patient_id="MRN-WAITING", seed=99), conditions="pneumonia")
    single_id = single.json()["image"]["analyses"][0]["id"]

    worker = celery_worker(
        "priority", service_env(CELERY_BROKER_URL=url, RADTRIAGE_REGISTRY=str(tiny_registry)), service_logs
    ).start(ready_text="ready.", timeout=90)
    try:
        wait_for(
            lambda: Analysis.objects.filter(pk__in=[*bulk_ids, single_id], state="succeeded").count() == 7,
            timeout=JOB_TIMEOUT,
            what="the backlog and the single upload",
        )
    finally:
        worker.stop()

    started = dict(Analysis.objects.filter(pk__in=[*bulk_ids, single_id]).values_list("pk", "started_at"))
    # Sent last, run first: the interactive queue comes before the batch queue.
    assert started[single_id] < min(started[i] for i in bulk_ids)


def test_abandoning_a_batch_keeps_the_reason_an_image_already_failed_for(
    api, private_redis, broker_switch
) -> None:
    from web.clinical.analysis.jobs import analysis_fail

    broker_switch(f"redis://127.0.0.1:{private_redis[1]}/0")  # no worker reads these jobs
    response = bulk_upload(
        api,
        [(f"{i}.dcm", dicom_bytes(patient_id=f"MRN-AB{i}", seed=60 + i)) for i in range(2)],
        conditions="pneumonia",
    )
    corrupt, other = [a["id"] for r in response.json()["results"] for a in r["analyses"]]
    analysis_fail(analysis_id=corrupt, message="The DICOM pixel data is truncated.")

    # The job then gives up on a temporary problem, for every analysis it holds.
    for analysis_id in (corrupt, other):
        analysis_fail(analysis_id=analysis_id, message="Abandoned after a temporary problem.")

    assert Analysis.objects.get(pk=corrupt).error_message == "The DICOM pixel data is truncated."
    assert Analysis.objects.get(pk=other).error_message == "Abandoned after a temporary problem."
