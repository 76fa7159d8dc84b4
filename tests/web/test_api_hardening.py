"""Hostile or odd requests get a clear 4xx, never a server error or a server path; /healthz/
says when a model answers from its placeholder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings

from tests.web.fixtures import WS_ORIGIN, dicom_bytes, session_cookie_header, upload
from web.asgi import application
from web.clinical.models import Analysis


@pytest.mark.parametrize(
    "query", ["?limit=99999999999999999999999", "?offset=99999999999999999999999&limit=5"]
)
def test_absurd_paging_is_answered_not_a_server_error(api, query: str) -> None:
    upload(api, dicom_bytes(patient_id="MRN-PAGE"))
    response = api.get(f"/api/studies/{query}")
    assert response.status_code == 200, response.content
    assert isinstance(response.json()["results"], list)


@pytest.mark.parametrize(
    ("query", "name"), [("?limit=-3", "limit"), ("?limit=0", "limit"), ("?offset=abc", "offset")]
)
def test_paging_that_is_not_a_whole_number_is_refused_with_the_reason(api, query: str, name: str) -> None:
    response = api.get(f"/api/studies/{query}")
    assert response.status_code == 400, response.content
    assert response.json()["error"].startswith(f"{name}:") and "whole number" in response.json()["error"]


@pytest.mark.parametrize("status", ["nonsense", "analysing\x00", "' OR 1=1 --"])
def test_an_unknown_status_filter_is_a_400_that_lists_the_known_ones(api, status: str) -> None:
    response = api.get("/api/studies/", {"status": status})
    assert response.status_code == 400
    # A NUL is refused before any filter reads it (web.request_guard), and says so.
    assert ("NUL" if "\x00" in status else "ai_complete") in str(response.json())


def test_a_heat_map_that_cannot_be_drawn_says_so_without_server_paths(api) -> None:
    body = upload(api, dicom_bytes(patient_id="MRN-HM")).json()
    analysis = Analysis.objects.get(pk=body["image"]["analyses"][0]["id"])
    Analysis.objects.filter(pk=analysis.pk).update(
        state="succeeded",
        probability=0.2,
        threshold=0.5,
        positive=False,
        heatmap_raw="heatmaps/gone/analysis-raw.png",
    )

    response = api.get(f"/api/analyses/{analysis.pk}/heatmap/")

    assert response.status_code == 404
    message = str(response.json())
    assert "missing or unreadable" in message
    assert str(django_settings.MEDIA_ROOT) not in message and "/" not in message.split(":", 1)[-1]


@pytest.mark.parametrize(
    "path",
    [
        "/ws/nowhere/at/all/",
        "/ws/",
        "/ws/studies/abc/",
        "/ws/studies/99999999999999999999999999/",
        "/ws/../../etc/passwd",
        "/ws/%ff%fe%00/",
        "/ws/" + "x" * 5000 + "/",
    ],
)
@pytest.mark.parametrize("logged_in", [True, False], ids=["logged-in", "anonymous"])
def test_an_unknown_websocket_path_is_closed_cleanly(
    transactional_db, api, path: str, logged_in: bool
) -> None:
    headers = [session_cookie_header(api), WS_ORIGIN] if logged_in else [WS_ORIGIN]

    async def attempt() -> tuple[bool, int | None]:
        communicator = WebsocketCommunicator(application, path, headers=headers)
        return await communicator.connect(timeout=5)

    connected, code = async_to_sync(attempt)()
    # A study id too large for the database is a real route: anonymous is told to log in first.
    routed = path.startswith("/ws/studies/9")
    assert connected is False and code == (4401 if routed and not logged_in else 4404)


def test_healthz_reports_a_model_answering_from_its_placeholder_and_its_recovery(
    client, db, settings, tiny_registry: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "registry"
    shutil.copytree(tiny_registry.parent, folder)
    settings.RADTRIAGE_REGISTRY = folder / "registry.json"
    artifact = folder / "models" / "tiny.keras"
    original = artifact.read_bytes()
    first = client.get("/healthz/").json()
    artifact.write_bytes(b"corrupted" * 100)
    corrupted = client.get("/healthz/").json()
    artifact.write_bytes(original)
    restored = client.get("/healthz/").json()

    assert first["models"]["pneumonia"] == "ok"
    # The tiny registry's cardiomegaly artifact does not exist: always degraded.
    assert first["status"] == "degraded" and "missing" in first["models"]["cardiomegaly"]
    assert "fails its checksum" in corrupted["models"]["pneumonia"]
    assert restored["models"]["pneumonia"] == "ok"
