"""The 403 page: an account without the right is told what it has, what the page needs and
how to log out, and the refusal is one log line, never a traceback."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.test import Client

from tests.web.fixtures import with_role


@pytest.fixture()
def logged_in(db: Any, django_user_model: Any):
    def make(username: str, role: str | None) -> Client:
        user = django_user_model.objects.create_user(username, password="pw-403-long-1")
        if role:
            with_role(user, role)
        client = Client()
        client.force_login(user)
        return client

    return make


def test_an_account_without_a_role_is_told_it_has_none_and_can_log_out(logged_in, caplog) -> None:
    client = logged_in("new.colleague", None)
    with caplog.at_level(logging.INFO):
        page = client.get("/")

    assert page.status_code == 403
    html = page.content.decode()
    assert "Your account cannot open this page" in html
    assert "new.colleague" in html and "no role" in html
    assert "see studies and their AI results" in html and "technologist, radiologist, admin" in html
    assert 'action="/logout/"' in html and "Log out" in html
    assert "Back to the worklist" not in html  # it could not open that either
    refused = [r for r in caplog.records if r.name == "django.request"]
    assert refused and all(r.exc_info is None for r in refused)  # one line, no traceback


def test_a_technologist_is_told_which_role_a_review_page_needs(logged_in) -> None:
    from web.access import Capability, requires

    client = logged_in("tech.tess", "technologist")
    request = client.get("/").wsgi_request  # a real request of this account
    page = requires(Capability.REVIEW)(lambda r: None)(request)  # type: ignore[arg-type,return-value]

    html = page.content.decode()
    assert page.status_code == 403 and "technologist" in html
    assert "review studies and write reports" in html and "radiologist, admin" in html
    assert "Back to the worklist" in html


def test_a_refusal_raised_elsewhere_gets_the_page_or_json(logged_in) -> None:
    from django.contrib.auth.models import AnonymousUser
    from django.core.exceptions import PermissionDenied
    from django.test import RequestFactory

    from web.access import permission_denied

    requests = [RequestFactory().get(path) for path in ("/anything/", "/api/anything/")]
    for request in requests:
        request.user = AnonymousUser()
    page, api = (permission_denied(r, PermissionDenied("Only the holder may.")) for r in requests)
    assert page.status_code == api.status_code == 403
    assert b"Only the holder may." in page.content
    assert api["Content-Type"] == "application/json" and b"Only the holder may." in api.content


def test_the_admin_user_list_shows_each_accounts_roles(admin_client, django_user_model) -> None:
    make = django_user_model.objects.create_user
    with_role(make("dr.list", password="pw-list-12345"), "radiologist")
    with_role(with_role(make("tech.list", password="pw-list-12345"), "technologist"), "radiologist")
    make("nobody.list", password="pw-list-12345")

    page = admin_client.get("/admin/auth/user/")
    assert page.status_code == 200
    html = page.content.decode()
    assert ">Roles<" in html

    def row(username: str) -> str:
        return html[html.index(f'">{username}</a>') :].split("</tr>")[0]

    assert "radiologist" in row("dr.list") and "technologist" not in row("dr.list")
    assert "radiologist, technologist" in row("tech.list")
    assert "no role (sees no patient data)" in row("nobody.list")
    assert "admin (superuser)" in row("admin")
