"""What a locked-out login sees (django-axes' AXES_LOCKOUT_CALLABLE): JSON for the API, a plain
page for the browser; both say how long to wait."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse


def lockout_response(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    message = (
        f"Too many failed logins for this account from this address: try again in "
        f"{minutes} minutes, or ask an administrator to unlock it."
    )
    if request.path.startswith("/api/"):
        return JsonResponse({"error": message}, status=429)
    return HttpResponse(f"<!doctype html><title>Locked out · RadTriage</title><p>{message}</p>", status=429)
