"""A changed or reset password, a deactivated account and a removed role end the account's API
tokens and login sessions (and close its live pages): whoever held them must log in again,
even once the account is back as it was. Other changes to the account end nothing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Group
from django.test import Client
from rest_framework.test import APIClient

from tests.web.fixtures import WS_ORIGIN, session_cookie_header, with_role

PASSWORD = "pw-radiologist-1"


@dataclass
class Holder:
    """Someone holding the account's access: an API token and a logged-in browser."""

    user: Any
    token: APIClient
    browser: Client

    def token_status(self) -> int:
        return self.token.get("/api/studies/").status_code

    def browser_status(self) -> int:
        return self.browser.get("/api/studies/").status_code


@pytest.fixture()
def holder(db: Any, django_user_model: Any) -> Holder:
    user = with_role(django_user_model.objects.create_user("dr.ends", password=PASSWORD), "radiologist")
    key = APIClient().post("/api/auth/token/", {"username": "dr.ends", "password": PASSWORD}).json()["token"]
    token = APIClient()
    token.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    browser = Client()
    assert browser.post("/login/", {"username": "dr.ends", "password": PASSWORD}).status_code == 302
    held = Holder(user, token, browser)
    assert (held.token_status(), held.browser_status()) == (200, 200)
    return held


def _password_changed(user: Any) -> None:
    user.set_password("a-new-password-42")
    user.save()


def _password_reset_by_an_admin(user: Any) -> None:
    from django.contrib.auth import get_user_model

    admin = Client()
    admin.force_login(get_user_model().objects.create_superuser("it.admin", password="pw-admin-1234"))
    response = admin.post(
        f"/admin/auth/user/{user.pk}/password/",
        {"password1": "Reset-by-IT-2026", "password2": "Reset-by-IT-2026", "usable_password": "true"},
    )
    assert response.status_code == 302, response.content.decode()[-2000:]


def _deactivated_and_back(user: Any) -> None:
    user.is_active = False
    user.save()
    user.is_active = True
    user.save()


def _role_removed_and_back(user: Any) -> None:
    group = Group.objects.get(name="radiologist")
    user.groups.remove(group)
    user.groups.add(group)


def _role_taken_from_the_group_side(user: Any) -> None:
    group = Group.objects.get(name="radiologist")
    group.user_set.remove(user)
    group.user_set.add(user)


def _roles_cleared_and_back(user: Any) -> None:
    user.groups.clear()
    with_role(user, "radiologist")


ENDINGS: dict[str, Callable[[Any], None]] = {
    "password changed": _password_changed,
    "password reset by an admin": _password_reset_by_an_admin,
    "deactivated (then reactivated)": _deactivated_and_back,
    "role removed (then given back)": _role_removed_and_back,
    "taken out of the role's group (then put back)": _role_taken_from_the_group_side,
    "every role cleared (then given back)": _roles_cleared_and_back,
}


@pytest.mark.parametrize("change", list(ENDINGS))
def test_the_change_ends_the_accounts_tokens_and_sessions(holder: Holder, change: str) -> None:
    from rest_framework.authtoken.models import Token

    ENDINGS[change](holder.user)

    assert holder.token_status() == 401
    assert holder.browser_status() == 401
    assert not Token.objects.filter(user=holder.user).exists()


def test_other_changes_to_the_account_end_nothing(holder: Holder) -> None:
    holder.user.first_name = "Meredith"
    holder.user.save()
    with_role(holder.user, "technologist")  # a role added
    elsewhere = Client().post("/login/", {"username": "dr.ends", "password": PASSWORD})  # a login elsewhere
    assert elsewhere.status_code == 302

    assert (holder.token_status(), holder.browser_status()) == (200, 200)


def test_a_removed_role_closes_the_accounts_open_live_pages(
    transactional_db: Any, django_user_model: Any
) -> None:
    user = with_role(django_user_model.objects.create_user("dr.live", password=PASSWORD), "radiologist")
    browser = Client()
    browser.force_login(user)
    from web.asgi import application

    async def scenario() -> tuple[bool, dict[str, Any]]:
        from channels.db import database_sync_to_async

        socket = WebsocketCommunicator(
            application, "/ws/worklist/", headers=[session_cookie_header(browser), WS_ORIGIN]
        )
        connected, _ = await socket.connect()
        await database_sync_to_async(user.groups.clear)()
        closed = await socket.receive_output(timeout=10)
        await socket.wait()
        return connected, closed

    connected, closed = async_to_sync(scenario)()

    assert connected
    assert closed == {"type": "websocket.close", "code": 4401}
