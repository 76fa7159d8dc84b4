"""Pagination with bounds: a limit or offset too large for the database is clamped, never a
server error (found by fuzzing `?limit=` beyond a 64-bit integer); one that is not a whole
number (or a limit under 1) is refused with a 400, as the schema says, not quietly ignored."""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response

from web.clinical.worklist.queries import COUNT_CAP

MAX_OFFSET = 2**31 - 1


class BoundedLimitOffsetPagination(LimitOffsetPagination):
    max_limit = 500
    minimums = {"limit": 1, "offset": 0}

    def get_limit(self, request: Any) -> int | None:
        self._checked(request, self.limit_query_param)
        return super().get_limit(request)

    def get_offset(self, request: Any) -> int:
        self._checked(request, self.offset_query_param)
        return min(super().get_offset(request), MAX_OFFSET)

    def _checked(self, request: Any, name: str) -> None:
        raw = request.query_params.get(name)
        if raw is not None and (not raw.isdigit() or int(raw) < self.minimums[name]):
            raise ValidationError({name: f"use a whole number from {self.minimums[name]}."})

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            parameter["schema"]["minimum"] = self.minimums[parameter["name"]]
        return parameters


class WorklistPagination(BoundedLimitOffsetPagination):
    """/api/studies/: the count stops COUNT_CAP studies past the page's offset (worklist_rows);
    then `count_capped` is true and `count` says "more than this many". Paging on with `next`
    goes on past it: each page counts again from its own offset."""

    def get_count(self, queryset: Any) -> int:
        queryset.count_from = self.get_offset(self.request)
        count = int(queryset.count())
        self.count_capped = bool(queryset.count_capped)
        return count

    def get_paginated_response(self, data: Any) -> Response:
        count = self.count or 0
        return Response(
            {
                "count": count - 1 if self.count_capped else count,
                "count_capped": self.count_capped,
                "next": self.get_next_link(),
                "previous": self.get_previous_link(),
                "results": data,
            }
        )

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        paginated = super().get_paginated_response_schema(schema)
        paginated["required"] = ["count", "count_capped", "results"]
        properties = paginated["properties"]
        properties["count"]["description"] = (
            f"the studies matching; with count_capped, more than this many (counting stops "
            f"{COUNT_CAP:,} studies past the offset)"
        )
        paginated["properties"] = {
            "count": properties["count"],
            "count_capped": {"type": "boolean", "description": "more studies match than count says"},
            **{k: v for k, v in properties.items() if k != "count"},
        }
        return paginated
