"""The audit log as CSV, for admins: /admin/audit/export.csv?user=&action=&patient=&study=&since=&until=
(the admin list's filters, same names). Streams, so a year of rows never sits in memory."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from typing import Any

from django.http import HttpRequest, HttpResponseBadRequest, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.utils import timezone

from web.access import Capability, client_ip, requires
from web.clinical.audit.queries import BadAuditFilter, audit_event_list, audit_filters_from
from web.clinical.audit.records import audit_record

COLUMNS = [
    "at",
    "user",
    "action",
    "patient_id",
    "study_id",
    "accession_number",
    "object_type",
    "object_id",
    "ip_address",
    "detail",
]


class _Echo:
    def write(self, value: str) -> str:
        return value


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    # A spreadsheet must not run a cell as a formula (CSV injection).
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _rows(events: Any) -> Iterator[list[str]]:
    yield COLUMNS
    for e in events.iterator(chunk_size=2000):
        yield [
            _cell(v)
            for v in (
                e.at.isoformat(),
                e.actor_label,
                e.action,
                e.patient.patient_id if e.patient else "",
                e.study_id or "",
                e.study.accession_number if e.study else "",
                e.object_type,
                e.object_id,
                e.ip_address or "",
                json.dumps(e.detail, sort_keys=True) if e.detail else "",
            )
        ]


@requires(Capability.MANAGE)
def audit_export_view(request: HttpRequest) -> HttpResponseBase:
    filters = audit_filters_from(request.GET)
    try:
        events = audit_event_list(**filters)
        count = events.count()
    except BadAuditFilter as exc:
        return HttpResponseBadRequest(str(exc), content_type="text/plain; charset=utf-8")
    # Exporting the log is itself an access to patient data: it is logged.
    audit_record(
        actor=request.user,
        action="audit.export",
        detail={"filters": {k: v for k, v in filters.items() if v}, "rows": count},
        ip_address=client_ip(request),
    )
    writer = csv.writer(_Echo())
    response = StreamingHttpResponse(
        (writer.writerow(row) for row in _rows(events)), content_type="text/csv; charset=utf-8"
    )
    stamp = timezone.localtime().strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.csv"'
    return response
