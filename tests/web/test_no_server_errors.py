"""Hostile input gets a clear 4xx, never a server error: JSON nested 100,000 levels deep, a NUL
byte in a query string or a form value, too many files in one upload, a websocket opened while
Redis is down. Every refusal under /api/ is JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from asgiref.sync import async_to_sync
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from tests.web.fixtures import WS_ORIGIN, dicom_bytes, free_port, session_cookie_header, upload

DEEP = 100_000


def deep_array(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.fixture()
def uploaded(api: Any) -> dict[str, Any]:
    response = upload(api, dicom_bytes(seed=901))
    assert response.status_code == 201, response.content
    return response.json()


def _verdict(api: Any, ids: dict[str, Any], body: str) -> Any:
    return api.put(
        f"/api/analyses/{ids['image']['analyses'][0]['id']}/verdict/", body, content_type="application/json"
    )


def _annotation(api: Any, ids: dict[str, Any], body: str) -> Any:
    return api.post(f"/api/images/{ids['image']['id']}/annotations/", body, content_type="application/json")


@pytest.mark.parametrize("send", [_verdict, _annotation], ids=["verdict", "annotation"])
@pytest.mark.parametrize(
    "body",
    [
        deep_array(DEEP),
        '{"note": ' + deep_array(DEEP) + "}",
        '{"verdict": "agree", "comment": "' + "x" * 10 + '", "x": ' + deep_array(200) + "}",
    ],
    ids=["bare", "in-a-field", "200-levels"],
)
def test_json_nested_too_deep_is_refused_with_a_json_400(api, uploaded, send, body: str) -> None:
    response = send(api, uploaded, body)

    assert response.status_code == 400, response.content[:300]
    assert "nested" in response.json()["error"]


def test_json_within_the_depth_limit_is_still_accepted(api, uploaded) -> None:
    shapes = [{"type": "rect", "x": 10, "y": 10, "w": 20, "h": 20}]
    response = _annotation(api, uploaded, json.dumps({"shapes": shapes, "note": "fine"}))

    assert response.status_code == 201, response.content


@pytest.mark.parametrize(
    "path",
    [
        "/api/studies/?search=%00",
        "/api/studies/?search=Doe%00",
        "/api/studies/?condition=%00",
        "/api/studies/?%00=1",
        "/api/verdicts/counts/?condition=%00",
        "/api/batches/?status=%00",
    ],
)
def test_a_nul_byte_in_an_api_query_is_a_json_400(api, path: str) -> None:
    response = api.get(path)

    assert response.status_code == 400, (response.status_code, response.content[:300])
    assert "NUL" in response.json()["error"]


def test_a_nul_byte_in_a_page_query_is_a_400(radiologist) -> None:
    browser = Client()
    browser.force_login(radiologist)
    response = browser.get("/?q=%00")

    assert response.status_code == 400
    assert "NUL" in response.content.decode()


@pytest.mark.parametrize(
    ("path", "data"),
    [
        ("/api/auth/token/", {"username": "dr.house\x00", "password": "x"}),
        ("/login/", {"username": "dr.house\x00", "password": "x"}),
    ],
)
def test_a_nul_byte_in_a_form_value_is_a_400(db, path: str, data: dict[str, str]) -> None:
    # As a browser's login form sends it (URL-encoded).
    response = Client().post(path, urlencode(data), content_type="application/x-www-form-urlencoded")

    assert response.status_code == 400, (response.status_code, response.content[:300])


def test_a_nul_byte_in_a_multipart_field_is_a_json_400(api) -> None:
    response = api.post(
        "/api/uploads/",
        {"file": SimpleUploadedFile("x.dcm", dicom_bytes(seed=902)), "patient_name": "Doe\x00Jane"},
        format="multipart",
    )

    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"] == "application/json"


def test_too_many_files_in_one_upload_is_a_json_400(api, settings) -> None:
    count = settings.DATA_UPLOAD_MAX_NUMBER_FILES + 1
    files = [SimpleUploadedFile(f"f{i}.png", b"x") for i in range(count)]
    response = api.post("/api/uploads/batch/", {"files": files}, format="multipart")

    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert "files" in response.json()["error"]


@pytest.fixture()
def redis_down(settings) -> Iterator[None]:
    """The channel layer points to a port nothing listens on (Redis down)."""
    layer = dict(settings.CHANNEL_LAYERS["default"])
    layer["CONFIG"] = {**layer["CONFIG"], "hosts": [f"redis://127.0.0.1:{free_port()}/0"]}
    settings.CHANNEL_LAYERS = {"default": layer}
    channel_layers.backends = {}
    yield
    channel_layers.backends = {}


def test_a_websocket_opened_while_redis_is_down_is_refused_cleanly(
    transactional_db, api, redis_down, caplog
) -> None:
    from web.asgi import application

    async def scenario() -> tuple[bool, Any]:
        socket = WebsocketCommunicator(
            application, "/ws/worklist/", headers=[session_cookie_header(api), WS_ORIGIN]
        )
        connected, code = await socket.connect(timeout=10)
        await socket.wait(timeout=10)
        return connected, code

    connected, code = async_to_sync(scenario)()

    assert not connected
    assert code == 4503  # try again later: the page reconnects by itself
    assert "Exception inside application" not in caplog.text


def test_a_request_django_refuses_before_any_api_view_is_a_json_400(db, settings) -> None:
    fields = urlencode({f"f{i}": "1" for i in range(settings.DATA_UPLOAD_MAX_NUMBER_FIELDS + 1)})
    response = Client().post("/api/auth/token/", fields, content_type="application/x-www-form-urlencoded")

    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert "Bad request" in response.json()["error"]


def test_a_server_error_under_the_api_is_json(rf) -> None:
    from web.api.errors import server_error

    response = server_error(rf.get("/api/studies/"))

    assert response.status_code == 500
    assert json.loads(response.content)["error"].startswith("Server error")
