"""Every API error is JSON: {"error": "<a sentence>", "detail": <DRF's detail>}, including those
Django answers before any API view runs (a 400 for a request past its limits, a 500)."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse, JsonResponse
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt
from rest_framework.response import Response
from rest_framework.views import exception_handler


def _first_message(detail: Any) -> str:
    if isinstance(detail, dict):
        for key, value in detail.items():
            message = _first_message(value)
            if message:
                if key in ("detail", "non_field_errors") or message.startswith(f"{key}:"):
                    return message
                return f"{key}: {message}"
        return ""
    if isinstance(detail, list):
        return _first_message(detail[0]) if detail else ""
    return str(detail)


def json_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    response = exception_handler(exc, context)
    if response is None:
        return None  # a real bug: let Django log it and answer 500
    detail = response.data
    response.data = {"error": _first_message(detail) or "Request failed.", "detail": detail}
    return response


@csrf_exempt  # it changes nothing: a POST to no endpoint is a JSON 404, not an HTML CSRF 403
def api_not_found(request: Any, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse({"error": f"No API endpoint at {request.path}."}, status=404)


def bad_request(request: Any, exception: Exception) -> HttpResponse:
    """handler400 (web.urls): Django refused the request itself (too many fields or files, a
    body too large, a bad Host): JSON under /api/, Django's page elsewhere."""
    if request.path.startswith("/api/"):
        reason = str(exception) if str(exception) else "The request could not be read."
        return JsonResponse({"error": f"Bad request: {reason}"}, status=400)
    return defaults.bad_request(request, exception)


def server_error(request: Any) -> HttpResponse:
    """handler500 (web.urls): JSON under /api/, Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse({"error": "Server error: it has been logged; please try again."}, status=500)
    return defaults.server_error(request)
