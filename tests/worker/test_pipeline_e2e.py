"""End to end: API upload -> Redis -> a real Celery worker (tiny real Keras model) ->
PostgreSQL rows + heat map files -> a websocket event through the real Redis channel layer."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from PIL import Image as PILImage

from tests.web.fixtures import (
    WS_ORIGIN,
    dicom_bytes,
    session_cookie_header,
    upload,
    wait_for,
)
from web.asgi import application
from web.clinical.models import Analysis
from worker.tasks import analyze

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

JOB_TIMEOUT = 120  # the first job imports TensorFlow and loads the model in the worker


async def _collect_until_done(
    communicator: WebsocketCommunicator, ids: set[int], events: list[dict[str, Any]]
) -> None:
    done: set[int] = set()
    while not ids <= done:
        event = await communicator.receive_json_from(timeout=JOB_TIMEOUT)
        events.append(event)
        if event["event"] in ("finished", "failed"):
            done.add(event["analysis"]["id"])


def test_an_uploaded_dicom_is_analysed_by_a_worker_and_the_browser_is_told(live_worker, api) -> None:
    events: list[dict[str, Any]] = []

    async def scenario() -> Any:
        communicator = WebsocketCommunicator(
            application, "/ws/worklist/", headers=[session_cookie_header(api), WS_ORIGIN]
        )
        connected, _ = await communicator.connect()
        assert connected
        response = await sync_to_async(upload)(api, dicom_bytes(patient_id="MRN-E2E"))
        assert response.status_code == 201, response.content
        ids = {a["id"] for a in response.json()["image"]["analyses"]}
        await _collect_until_done(communicator, ids, events)
        await communicator.disconnect()
        return response.json()

    body = async_to_sync(scenario)()

    by_id = {a["id"]: a for a in body["image"]["analyses"]}
    pneumonia = Analysis.objects.get(pk=next(i for i, a in by_id.items() if a["condition"] == "pneumonia"))
    cardiomegaly = Analysis.objects.get(
        pk=next(i for i, a in by_id.items() if a["condition"] == "cardiomegaly")
    )
    # The finished event carries the stored result.
    finished = {e["analysis"]["id"]: e["analysis"] for e in events if e["event"] == "finished"}
    assert set(finished) == {pneumonia.pk, cardiomegaly.pk}, events
    assert {e["event"] for e in events} >= {"started", "finished"}
    assert finished[pneumonia.pk]["probability"] == pytest.approx(pneumonia.probability)

    # The real model ran and is recorded with the artifact's hash.
    assert pneumonia.state == "succeeded" and 0.0 <= pneumonia.probability <= 1.0
    assert pneumonia.model_id == "pneumonia-tiny-test" and len(pneumonia.model_sha256) == 64
    assert pneumonia.is_placeholder is False and pneumonia.attempts == 1
    assert pneumonia.positive == (pneumonia.probability >= pneumonia.threshold)
    # No trained model for cardiomegaly: a flagged placeholder, never a finding.
    assert cardiomegaly.state == "succeeded" and cardiomegaly.is_placeholder is True
    assert "missing" in cardiomegaly.placeholder_reason
    assert finished[cardiomegaly.pk]["is_finding"] is False

    # The heat map downloads as a PNG overlay at the X-ray's size, plus the raw map.
    result = api.get(f"/api/analyses/{pneumonia.pk}/").json()
    overlay = api.get(result["heatmap_url"])
    assert overlay.status_code == 200 and overlay["Content-Type"] == "image/png"
    picture = np.asarray(PILImage.open(io.BytesIO(overlay.content)))
    assert picture.shape == (96, 96, 3)
    assert not (picture[..., 0] == picture[..., 2]).all()  # coloured by the heat map
    # At intensity 0 the overlay is the X-ray alone (gray); a bad intensity is refused.
    plain = np.asarray(PILImage.open(io.BytesIO(api.get(result["heatmap_url"] + "?alpha=0").content)))
    assert (plain[..., 0] == plain[..., 2]).all() and (plain[..., 1] == plain[..., 2]).all()
    assert api.get(result["heatmap_url"] + "?alpha=2").status_code == 400
    raw = api.get(result["heatmap_raw_url"])
    raw_map = np.asarray(PILImage.open(io.BytesIO(b"".join(raw.streaming_content))))
    assert raw_map.ndim == 2
    # The colour layer the study page lays over the X-ray at the chosen intensity: the raw map
    # in JET colours (its hottest cell red, its coldest blue).
    color = api.get(result["heatmap_url"] + "?kind=color")
    assert color.status_code == 200 and color["Content-Type"] == "image/png"
    layer = np.asarray(PILImage.open(io.BytesIO(color.content)).convert("RGB")).astype(int)
    assert layer.shape[:2] == raw_map.shape
    hot = np.unravel_index(np.argmax(raw_map), raw_map.shape)
    cold = np.unravel_index(np.argmin(raw_map), raw_map.shape)
    assert layer[hot][0] > layer[hot][2] and layer[cold][2] > layer[cold][0]
    assert result["image_thumbnail_url"] == f"/api/images/{pneumonia.image_id}/thumbnail/"

    study = api.get(f"/api/studies/{body['study']['id']}/").json()
    assert study["status"] == "ai_complete"


def test_a_study_page_socket_hears_only_its_own_study(live_worker, api) -> None:
    async def scenario() -> list[dict[str, Any]]:
        first = await sync_to_async(upload)(api, dicom_bytes(patient_id="MRN-S1"), conditions="pneumonia")
        study_id = first.json()["study"]["id"]
        communicator = WebsocketCommunicator(
            application, f"/ws/studies/{study_id}/", headers=[session_cookie_header(api), WS_ORIGIN]
        )
        assert (await communicator.connect())[0]
        other = await sync_to_async(upload)(
            api, dicom_bytes(patient_id="MRN-S2", seed=5), conditions="pneumonia"
        )
        mine = await sync_to_async(upload)(
            api,
            dicom_bytes(patient_id="MRN-S1", study_uid=first.json()["study"]["study_instance_uid"], seed=6),
            conditions="pneumonia",
        )
        events: list[dict[str, Any]] = []
        await _collect_until_done(communicator, {mine.json()["image"]["analyses"][0]["id"]}, events)
        other_id = other.json()["image"]["analyses"][0]["id"]
        await sync_to_async(wait_for)(
            lambda: Analysis.objects.get(pk=other_id).state == "succeeded",
            timeout=JOB_TIMEOUT,
            what="the other study's job",
        )
        assert await communicator.receive_nothing(timeout=0.5)
        await communicator.disconnect()
        return events

    events = async_to_sync(scenario)()
    # Analysis events and the study's own state events, all of this one study.
    studies = {e["analysis"]["study_id"] if "analysis" in e else e["study"]["id"] for e in events}
    first_study = Analysis.objects.get(pk=next(e["analysis"]["id"] for e in events if "analysis" in e))
    assert studies == {first_study.image.study_id}


def test_a_corrupt_stored_image_fails_once_with_its_message(live_worker, api) -> None:
    response = upload(api, dicom_bytes(patient_id="MRN-BAD"), conditions="pneumonia")
    analysis = Analysis.objects.select_related("image").get(pk=response.json()["image"]["analyses"][0]["id"])
    wait_for(
        lambda: Analysis.objects.get(pk=analysis.pk).state == "succeeded",
        timeout=JOB_TIMEOUT,
        what="the first run",
    )
    # The stored file rots on disk; a re-run must fail cleanly, not retry forever.
    path = analysis.image.file.path
    with open(path, "r+b") as handle:
        handle.truncate(Path(path).stat().st_size - 5000)
    rerun = api.post(
        f"/api/images/{analysis.image_id}/analyses/", {"conditions": ["pneumonia"]}, format="json"
    )
    assert rerun.status_code == 201
    failed = wait_for(
        lambda: Analysis.objects.filter(pk=rerun.json()[0]["id"], state="failed").first(),
        timeout=JOB_TIMEOUT,
        what="the re-run to fail",
    )

    assert "truncated or corrupt" in failed.error_message
    assert failed.attempts == 1 and failed.probability is None and not failed.heatmap_raw


def test_a_duplicate_delivery_gives_one_result(live_worker, api) -> None:
    response = upload(api, dicom_bytes(patient_id="MRN-DUP"), conditions="pneumonia")
    analysis_id = response.json()["image"]["analyses"][0]["id"]
    # The broker hands the same job out twice more (redelivery after a lost ack).
    analyze.apply_async(args=[analysis_id], queue="interactive")
    analyze.apply_async(args=[analysis_id], queue="interactive")

    done = wait_for(
        lambda: Analysis.objects.filter(pk=analysis_id, state="succeeded").first(),
        timeout=JOB_TIMEOUT,
        what="the job",
    )
    first_finish = done.finished_at
    wait_for(
        lambda: live_worker.log().count(f"Analysis {analysis_id} already succeeded") >= 2,
        timeout=JOB_TIMEOUT,
        what="both duplicates to be consumed",
    )

    done.refresh_from_db()
    assert done.finished_at == first_finish and done.attempts == 1
    heatmaps = list(Path(done.heatmap_raw.path).parent.glob(f"analysis-{analysis_id}-*"))
    assert len(heatmaps) == 1  # one raw map (overlays are drawn on request): nothing twice


def test_the_worker_loads_the_model_once_after_fork_and_keeps_it_warm(live_worker, api) -> None:
    # The session's worker may have reloaded it before (a fault test replaces its file): what
    # counts is that these jobs load nothing, and that any load happened after fork.
    wait_for(lambda: "Models warm in process" in live_worker.log(), timeout=JOB_TIMEOUT, what="the warm-up")
    log_before = len(live_worker.log())
    ids = [
        upload(api, dicom_bytes(patient_id=f"MRN-W{i}", seed=40 + i), conditions="pneumonia").json()["image"][
            "analyses"
        ][0]["id"]
        for i in range(3)
    ]
    wait_for(
        lambda: Analysis.objects.filter(pk__in=ids, state="succeeded").count() == 3,
        timeout=JOB_TIMEOUT,
        what="three jobs",
    )

    log = live_worker.log()
    loads = [line for line in log.splitlines() if "Loaded model pneumonia-tiny-test" in line]
    assert loads and all("ForkPoolWorker" in line for line in loads)  # never the parent, before fork
    assert "Loaded model pneumonia-tiny-test" not in log[log_before:]  # these three jobs found it warm
    assert len(set(Analysis.objects.filter(pk__in=ids).values_list("worker", flat=True))) == 1


def test_a_transient_storage_error_is_retried_with_backoff_then_succeeds(live_worker, api) -> None:
    from django.conf import settings

    from tests.web.fixtures import png_bytes

    first = upload(
        api,
        png_bytes(seed=11),
        "a.png",
        patient_id="MRN-RETRY",
        body_part="skull",
        accession_number="ACC-RETRY",
    )
    study_id = first.json()["study"]["id"]
    assert first.json()["image"]["analyses"] == []
    # The disk misbehaves: the study's heat-map folder cannot be created.
    blocker = Path(settings.MEDIA_ROOT) / "heatmaps" / str(study_id)
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    try:
        second = upload(
            api,
            png_bytes(seed=12),
            "b.png",
            patient_id="MRN-RETRY",
            accession_number="ACC-RETRY",
            conditions="pneumonia",
        )
        analysis_id = second.json()["image"]["analyses"][0]["id"]
        retrying = wait_for(
            lambda: Analysis.objects.filter(pk=analysis_id, error_message__startswith="Retrying").first(),
            timeout=JOB_TIMEOUT,
            interval=0.02,
            what="the job to be retried",
        )
        assert retrying.state in ("queued", "running")
    finally:
        blocker.unlink()  # the disk recovers before the backed-off retry runs

    done = wait_for(
        lambda: Analysis.objects.filter(pk=analysis_id, state="succeeded").first(),
        timeout=JOB_TIMEOUT,
        what="the retry to succeed",
    )
    assert done.attempts == 2 and done.error_message == "" and done.heatmap_raw
    assert second.json()["study"]["id"] == study_id
