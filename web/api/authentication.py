"""API tokens that expire: a token older than RADTRIAGE_TOKEN_TTL_HOURS is refused with a message
that says how to get a new one (POST /api/auth/token/ issues a fresh one; DELETE revokes)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings
from django.utils import timezone
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import AuthenticationFailed


def token_expired(token: Token) -> bool:
    return timezone.now() - token.created > dt.timedelta(hours=settings.RADTRIAGE_TOKEN_TTL_HOURS)


class ExpiringTokenAuthentication(TokenAuthentication):
    def authenticate_credentials(self, key: str) -> tuple[Any, Token]:
        user, token = super().authenticate_credentials(key)
        if token_expired(token):
            raise AuthenticationFailed(
                "This API token has expired: request a new one with POST /api/auth/token/."
            )
        return user, token
