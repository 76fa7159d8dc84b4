"""Who may see what, JSON errors, the schema, and the web process staying TensorFlow-free."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.web.fixtures import REPO, WS_ORIGIN, dicom_bytes, session_cookie_header, upload
from web.asgi import application
from web.clinical.models import AuditEvent, Image


def _ws_connect(path: str, headers: list[tuple[bytes, bytes]]) -> tuple[bool, int | None]:
    async def attempt() -> tuple[bool, int | None]:
        communicator = WebsocketCommunicator(application, path, headers=headers)
        connected, code = await communicator.connect(timeout=5)
        if connected:
            await communicator.disconnect()
        return connected, code

    return async_to_sync(attempt)()


@pytest.mark.parametrize(
    "method,path",
    [
        ("get", "/api/studies/"),
        ("get", "/api/studies/1/"),
        ("get", "/api/analyses/1/"),
        ("get", "/api/analyses/1/heatmap/"),
        ("post", "/api/uploads/"),
    ],
)
def test_an_outsider_gets_401_json_from_every_api_endpoint(db, method: str, path: str) -> None:
    response = getattr(APIClient(), method)(path)

    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert "credentials were not provided" in response.json()["error"]


def test_an_outsiders_upload_creates_nothing(db) -> None:
    response = upload(APIClient(), dicom_bytes())

    assert response.status_code == 401 and not Image.objects.exists()


def test_a_token_authenticates_api_calls(db, radiologist) -> None:
    token = Token.objects.create(user=radiologist)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")

    assert client.get("/api/studies/").status_code == 200
    assert (
        APIClient()
        .post("/api/auth/token/", {"username": "dr.house", "password": "pw-radiologist"})
        .json()["token"]
        == token.key
    )


def test_a_wrong_password_gets_a_clear_400(db, radiologist) -> None:
    response = APIClient().post("/api/auth/token/", {"username": "dr.house", "password": "no"})

    assert response.status_code == 400
    assert "Unable to log in" in response.json()["error"]


def test_a_missing_study_or_endpoint_is_a_json_404(api) -> None:
    missing = api.get("/api/studies/999999/")
    nowhere = api.get("/api/nothing-here/")

    assert missing.status_code == 404 and "No study with id 999999" in missing.json()["error"]
    assert nowhere.status_code == 404 and nowhere.json()["error"].startswith("No API endpoint")


def test_a_heatmap_that_does_not_exist_yet_says_why(api) -> None:
    analysis_id = upload(api, dicom_bytes(), conditions="pneumonia").json()["image"]["analyses"][0]["id"]
    response = api.get(f"/api/analyses/{analysis_id}/heatmap/")

    assert response.status_code == 404
    assert "no heat map yet (state: queued)" in response.json()["error"]


def test_viewing_a_study_is_audited(api) -> None:
    study_id = upload(api, dicom_bytes(patient_id="MRN-AUD")).json()["study"]["id"]
    api.get(f"/api/studies/{study_id}/")

    event = AuditEvent.objects.filter(action="study.view").get()
    assert event.actor_label == "dr.house" and event.patient.patient_id == "MRN-AUD"


def test_the_openapi_schema_is_served(db) -> None:
    response = APIClient().get("/api/schema/", HTTP_ACCEPT="application/json")

    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {"/api/uploads/", "/api/studies/", "/api/analyses/{id}/heatmap/"} <= set(paths)


def test_an_anonymous_websocket_is_refused(db) -> None:
    connected, code = _ws_connect("/ws/worklist/", [WS_ORIGIN])

    assert connected is False and code == 4401


def test_a_websocket_from_a_foreign_origin_is_refused(transactional_db, api) -> None:
    connected, _ = _ws_connect(
        "/ws/worklist/", [session_cookie_header(api), (b"origin", b"https://evil.example")]
    )
    assert connected is False


def test_a_logged_in_user_may_open_the_worklist_socket_but_not_a_missing_study(transactional_db, api) -> None:
    assert _ws_connect("/ws/worklist/", [session_cookie_header(api), WS_ORIGIN])[0] is True
    assert _ws_connect("/ws/studies/424242/", [session_cookie_header(api), WS_ORIGIN]) == (False, 4404)


def test_the_web_process_never_imports_tensorflow() -> None:
    code = (
        "import sys, django; django.setup(); "
        "import web.urls, web.asgi, web.api.views, web.ui.views, worker.tasks; "
        "from django.test import Client; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, "
        "[m for m in sys.modules if m.startswith(('tensorflow', 'keras'))][:5]; print('clean')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "web.settings"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "clean" in result.stdout


@pytest.mark.parametrize(
    "missing,message",
    [
        ("SECRET_KEY", "SECRET_KEY is not set"),
        ("REDIS_URL", "REDIS_URL is not set"),
        ("DATABASE_URL", "DATABASE_URL is not set"),
    ],
)
def test_production_refuses_to_start_without_a_required_setting(missing: str, message: str) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"SECRET_KEY", "REDIS_URL", "DATABASE_URL", "ALLOWED_HOSTS"}
    }
    env.update(
        DEBUG="0",
        SECRET_KEY="x" * 50,
        REDIS_URL="redis://r:6379/0",
        DATABASE_URL="postgres://u@h/db",
        ALLOWED_HOSTS="rad.example",
        DJANGO_SETTINGS_MODULE="web.settings",
    )
    env.pop(missing)
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )

    assert result.returncode != 0
    assert message in result.stderr
