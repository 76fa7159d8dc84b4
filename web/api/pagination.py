"""Pagination with bounds: a limit or offset too large for the database is clamped, never a
server error (found by fuzzing `?limit=` beyond a 64-bit integer); one that is not a whole
number (or a limit under 1) is refused with a 400, as the schema says, not quietly ignored."""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import LimitOffsetPagination

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
