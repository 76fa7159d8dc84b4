"""Log filters that keep patient identifiers out of request logs.

A search is sent in the query string (`/?q=<name>`, `/api/studies/?search=<patient id>`), and
web servers log every request line with its query string. The filter below (settings.LOGGING,
on uvicorn's and Django's access loggers) logs the path and drops the query string after its
"?": `GET /api/studies/? HTTP/1.1`. Names of parameters go too: a client chooses them as well.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

# A query string: from "?" to the end of the URL (a request target holds no whitespace).
_QUERY = re.compile(r"\?\S*")


def query_dropped(text: str) -> str:
    """`/a/?q=Doe&limit=5` -> `/a/?`, in any text holding URLs (a request line too)."""
    return _QUERY.sub("?", text)


def _scrubbed(value: Any) -> Any:
    return query_dropped(value) if isinstance(value, str) else value


class QueryStringDropped(logging.Filter):
    """Rewrites a request log record's arguments (uvicorn: client, method, path with query,
    version, status; Django's runserver: the request line) without their query strings."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, Mapping):
            record.args = {key: _scrubbed(value) for key, value in record.args.items()}
        elif isinstance(record.args, tuple):
            record.args = tuple(_scrubbed(value) for value in record.args)
        elif isinstance(record.msg, str) and not record.args:
            record.msg = query_dropped(record.msg)
        return True
