"""The API's request parsers (settings.REST_FRAMEWORK): JSON with a depth limit, multipart that
keeps a file whose name is not UTF-8; neither lets a NUL character through, and a body over
Django's limits (files, fields, bytes) is a 400 that says which.

JSON nested deeper than JSON_MAX_DEPTH is refused before anything reads it: Python's decoder
gives up with a RecursionError (a server error) near 1,000 levels, and code that walks the
value would meet the same. No request of this API needs more than a few levels.

A NUL character (U+0000) cannot be stored in PostgreSQL text, and no person types one: it is
refused in any JSON string or form field (query strings: web.request_guard).

Django's multipart parser skips a part whose header line does not decode as UTF-8: a file sent
with a Latin-1 name (curl or an old client, from a Linux folder) would vanish before any view
sees it, and a bulk upload could not say that file was refused. The parser below passes the
body through `_PartHeaderGuard`, which rewrites such a header line with U+FFFD in place of the
odd bytes and marks the part, so the view receives the file and refuses it by name.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.core.files.uploadedfile import UploadedFile
from django.utils.http import parse_header_parameters
from rest_framework import parsers
from rest_framework.exceptions import ParseError

from web.request_guard import NUL_MESSAGE

JSON_MAX_DEPTH = 32
JSON_TOO_DEEP = f"The JSON body is nested more than {JSON_MAX_DEPTH} levels deep: no request of this API is."

NAME_NOT_UTF8_MARK = "x-radtriage-name-not-utf8"  # a Content-Type parameter the guard adds
NAME_NOT_UTF8_MESSAGE = (
    "The file name is not valid UTF-8, so it cannot be recorded: rename the file (or send it "
    "from a browser) and upload it again."
)
_MAX_HEADER = 8192  # the longest part header Django reads; past it Django refuses the request


def name_not_utf8(upload: UploadedFile) -> bool:
    """Whether this file's part named it in bytes that are not UTF-8 (its name then shows
    U+FFFD for them)."""
    extra = getattr(upload, "content_type_extra", None) or {}
    return NAME_NOT_UTF8_MARK in extra


class _PartHeaderGuard:
    """A read-only stream over a multipart body that rewrites part-header lines that are not
    UTF-8 (see the module's docstring). Bodies of parts pass through unchanged."""

    def __init__(self, stream: Any, boundary: bytes) -> None:
        self._stream = stream
        self._delimiter = b"--" + boundary
        self._pending = b""  # read, not yet passed on
        self._in_header = False
        self._eof = False

    def read(self, size: int = -1) -> bytes:
        out = b""
        while not out and not (self._eof and not self._pending):
            if not self._eof:
                chunk = self._stream.read(64 * 1024)
                if chunk:
                    self._pending += chunk
                else:
                    self._eof = True
            out = self._advance()
        return out

    def _advance(self) -> bytes:
        """What can be passed on now; keeps what may be part of a delimiter or a header."""
        out = []
        while True:
            if self._in_header:
                end = self._pending.find(b"\r\n\r\n")
                if end == -1:
                    if len(self._pending) > _MAX_HEADER or self._eof:
                        out.append(self._pending)
                        self._pending, self._in_header = b"", False
                    break
                out.append(_fixed_header(self._pending[:end]) + b"\r\n\r\n")
                self._pending, self._in_header = self._pending[end + 4 :], False
            else:
                found = self._pending.find(self._delimiter)
                if found == -1:
                    keep = 0 if self._eof else len(self._delimiter) - 1
                    cut = max(0, len(self._pending) - keep)
                    out.append(self._pending[:cut])
                    self._pending = self._pending[cut:]
                    break
                cut = found + len(self._delimiter)
                out.append(self._pending[:cut])
                self._pending, self._in_header = self._pending[cut:], True
        return b"".join(out)


def _fixed_header(header: bytes) -> bytes:
    lines = header.split(b"\r\n")
    marked = False
    for i, line in enumerate(lines):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            lines[i] = line.decode("utf-8", "replace").encode("utf-8")
            marked = marked or line.lower().startswith(b"content-disposition")
    if not marked:
        return b"\r\n".join(lines)
    mark = f"; {NAME_NOT_UTF8_MARK}=1".encode()
    for i, line in enumerate(lines):
        if line.lower().startswith(b"content-type:"):
            lines[i] = line + mark
            break
    else:
        lines.append(b"Content-Type: application/octet-stream" + mark)
    return b"\r\n".join(lines)


class MultiPartParser(parsers.MultiPartParser):
    """DRF's multipart parser; a file whose name is not UTF-8 arrives marked (name_not_utf8)
    instead of being dropped; a field holding a NUL, or a body past Django's limits, is a 400."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        _, params = parse_header_parameters(media_type or "")
        boundary = params.get("boundary", "")
        if stream is not None and boundary:
            stream = _PartHeaderGuard(stream, boundary.encode("ascii", "replace"))
        try:
            parsed = super().parse(stream, media_type, parser_context)
        except TooManyFilesSent:
            raise ParseError(_too_many("files", "DATA_UPLOAD_MAX_NUMBER_FILES")) from None
        except TooManyFieldsSent:
            raise ParseError(_too_many("fields", "DATA_UPLOAD_MAX_NUMBER_FIELDS")) from None
        except RequestDataTooBig:
            raise ParseError("The form's fields (files aside) are too large.") from None
        for key, values in parsed.data.lists():
            if "\x00" in key or any("\x00" in value for value in values):
                raise ParseError(f"{key.replace(chr(0), '')}: {NUL_MESSAGE}")
        return parsed


def _too_many(what: str, setting: str) -> str:
    from django.conf import settings

    limit = getattr(settings, setting)
    return f"Too many {what} in one request: at most {limit:,}. Send the rest in another request."


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, with a depth limit and no NUL in any string (see the module)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(JSON_TOO_DEEP) from None
        json_checked(data)
        return data


def json_checked(data: Any) -> None:
    """Refuse (ParseError) a parsed JSON value nested too deep or holding a NUL in a string.
    Walked with a stack, not recursion: the check must not fail the way it guards against."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                raise ParseError(NUL_MESSAGE)
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > JSON_MAX_DEPTH:
            raise ParseError(JSON_TOO_DEEP)
        items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        stack.extend((item, depth + 1) for item in items)
