"""A request whose query string or form holds a NUL character is refused (400) before any view
sees it. PostgreSQL cannot hold U+0000 in text (a search for it was a server error), and no
person types one, so one check here stands for every page and endpoint. Multipart and JSON
bodies are checked where they are parsed (web.api.parsers); a URL-encoded form here.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.http.request import QueryDict

NUL_MESSAGE = "A NUL character (U+0000) is not accepted in a request: remove it and send the request again."


def _holds_nul(values: QueryDict) -> bool:
    return any("\x00" in key or any("\x00" in v for v in vs) for key, vs in values.lists())


class NulCharacterRefused:
    """Middleware, early in settings.MIDDLEWARE: JSON for the API, plain text for pages."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        form = request.content_type == "application/x-www-form-urlencoded" and request.method == "POST"
        if _holds_nul(request.GET) or (form and _holds_nul(request.POST)):
            if request.path.startswith("/api/"):
                return JsonResponse({"error": NUL_MESSAGE}, status=400)
            return HttpResponseBadRequest(NUL_MESSAGE, content_type="text/plain; charset=utf-8")
        return self.get_response(request)
