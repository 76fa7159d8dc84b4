"""The API docs work offline (every file they load is ours), and the app has a favicon."""

from __future__ import annotations

import re

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from django.conf import settings
from django.contrib.staticfiles import finders
from django.test import Client

ASSET = re.compile(r"""<(?:script|link|img)\b[^>]*?\b(?:src|href)=["']([^"']+)["']""", re.IGNORECASE)


def _asgi_get(path: str) -> tuple[int, bytes]:
    """GET through the real ASGI app (which serves the static files itself)."""
    from web.asgi import application

    async def get() -> tuple[int, bytes]:
        scope = {"type": "http", "http_version": "1.1", "method": "GET", "path": path, "query_string": b""}
        scope |= {"headers": [(b"host", b"testserver")], "scheme": "http", "server": ("testserver", 80)}
        app = ApplicationCommunicator(application, scope)
        await app.send_input({"type": "http.request", "body": b"", "more_body": False})
        start = await app.receive_output(timeout=20)
        body = b""
        while True:
            message = await app.receive_output(timeout=20)
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        return start["status"], body

    return async_to_sync(get)()


@pytest.mark.parametrize("page", ["/api/docs/", "/api/redoc/"])
def test_the_api_docs_load_nothing_from_another_host(db, page: str) -> None:
    response = Client().get(page)
    assert response.status_code == 200
    html = response.content.decode()
    assets = ASSET.findall(html)
    assert any(a.endswith(".js") for a in assets), assets  # the docs' own script is among them
    foreign = [a for a in assets if "//" in a]
    assert not foreign, f"{page} loads files from another host: {foreign}"
    assert "googleapis" not in html and "cdn.jsdelivr" not in html and "unpkg" not in html
    for asset in assets:
        assert asset.startswith(settings.STATIC_URL), asset
        name = asset.removeprefix(settings.STATIC_URL)
        assert finders.find(name), f"{asset} is not among the static files"
        status, body = _asgi_get(asset)
        assert status == 200 and len(body) > 100, asset


def test_swagger_ui_does_not_call_the_online_validator(db) -> None:
    html = Client().get("/api/docs/").content.decode()
    assert '"validatorUrl": null' in html


def test_every_page_links_the_favicon_and_favicon_ico_is_served(db) -> None:
    login = Client().get("/login/").content.decode()
    icon = re.search(r'<link rel="icon" type="image/svg\+xml" href="([^"]+)">', login)
    assert icon, "the login page links no favicon"
    status, body = _asgi_get(icon.group(1))
    assert status == 200 and body.startswith(b"<svg")

    response = Client().get("/favicon.ico")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/svg+xml"
    assert b"".join(response.streaming_content if response.streaming else [response.content]).startswith(
        b"<svg"
    )
