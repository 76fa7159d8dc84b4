"""The schema's error responses: every API error is JSON {"error": <a sentence>, "detail": ...}
(web.api.errors), so the schema says so for each operation instead of leaving 4xx undocumented."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse

ERROR_REF = {"$ref": "#/components/schemas/Error"}
ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {"type": "string", "description": "What went wrong, in a sentence for a person."},
        "detail": {"description": "DRF's own detail (field errors), when there is one."},
    },
    "required": ["error"],
}
EVERY_OPERATION = {
    "400": "The request was refused: `error` says why.",
    "401": "Not logged in, or the API token is missing, wrong or expired.",
    "403": "The account's role does not allow this.",
    "404": "No such object.",
}
UPLOADS = {
    "409": "The file clashes with a stored image of another patient (kept for review).",
    "413": "The file is larger than the upload limit.",
}


def refused(why: str) -> OpenApiResponse:
    """A documented refusal (409: the state or the holder does not allow it), for
    `extend_schema(responses={409: refused("...")})`: its body is the Error object."""
    return OpenApiResponse(description=why)


def error_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: the Error schema on every operation's 4xx."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            codes = dict(EVERY_OPERATION)
            if method == "post" and path.startswith(("/api/uploads/", "/api/batches/")):
                codes.update(UPLOADS)
            responses = operation.setdefault("responses", {})
            for code, response in responses.items():
                if code.startswith("4") and not response.get("content"):
                    response["content"] = {"application/json": {"schema": ERROR_REF}}  # refused()
            for code, description in codes.items():
                if code not in responses:
                    responses[code] = {
                        "content": {"application/json": {"schema": ERROR_REF}},
                        "description": description,
                    }
                    continue
                # A documented 4xx body (a bulk upload's results) or a refusal of the request.
                for media in responses[code].setdefault("content", {}).values():
                    if media.get("schema") not in (None, ERROR_REF):
                        media["schema"] = {"anyOf": [media["schema"], ERROR_REF]}
    return result
