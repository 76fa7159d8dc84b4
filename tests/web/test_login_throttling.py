"""Every login path is throttled: after five wrong passwords for one account from one address,
even the right password is refused for a while, with a message that says so."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from rest_framework.test import APIClient

LIMIT = 5


def _token_login(password: str):
    return APIClient().post("/api/auth/token/", {"username": "dr.house", "password": password})


def test_the_token_endpoint_locks_out_after_five_wrong_passwords(db, radiologist) -> None:
    wrong = [_token_login(f"guess-{i}").status_code for i in range(LIMIT)]
    right = _token_login("pw-radiologist")

    assert wrong == [400] * (LIMIT - 1) + [429]  # the fifth failure already locks the account
    assert right.status_code == 429
    assert "Too many failed logins" in right.json()["error"]


@pytest.mark.parametrize("login_path", ["/login/", "/admin/login/"])
def test_the_login_page_and_the_admin_lock_out_too(db, login_path: str) -> None:
    get_user_model().objects.create_superuser("root", password="pw-admin-123")
    browser = Client()
    for i in range(LIMIT):
        browser.post(login_path, {"username": "root", "password": f"nope-{i}"})
    response = browser.post(login_path, {"username": "root", "password": "pw-admin-123"})

    assert response.status_code == 429
    assert "Too many failed logins" in response.content.decode()
    assert "_auth_user_id" not in browser.session


def test_a_successful_login_before_the_limit_starts_the_count_again(db, radiologist) -> None:
    for i in range(LIMIT - 1):
        assert _token_login(f"guess-{i}").status_code == 400
    assert _token_login("pw-radiologist").status_code == 200
    for i in range(LIMIT - 1):
        assert _token_login(f"again-{i}").status_code == 400
    assert _token_login("pw-radiologist").status_code == 200


def test_an_expired_token_is_refused_and_logging_in_again_issues_a_new_one(db, radiologist, settings) -> None:
    from rest_framework.authtoken.models import Token

    old = _token_login("pw-radiologist").json()["token"]
    Token.objects.filter(key=old).update(created=Token.objects.get(key=old).created - dt.timedelta(hours=200))
    settings.RADTRIAGE_TOKEN_TTL_HOURS = 168
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {old}")
    refused = client.get("/api/studies/")
    new = _token_login("pw-radiologist").json()["token"]
    client.credentials(HTTP_AUTHORIZATION=f"Token {new}")

    assert refused.status_code == 401 and "expired" in refused.json()["error"]
    assert new != old and client.get("/api/studies/").status_code == 200


def test_a_token_can_be_revoked(db, radiologist) -> None:
    token = _token_login("pw-radiologist").json()["token"]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")

    assert client.delete("/api/auth/token/").status_code == 204
    assert client.get("/api/studies/").status_code == 401
