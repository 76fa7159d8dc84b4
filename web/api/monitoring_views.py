"""Model monitoring over the API (admins: Capability.MANAGE): each model's numbers in a window."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from web.access import Capability, api_requires
from web.clinical.monitoring.report import MonitoringRequestInvalid, monitoring_api, window_days_parse


class MonitoringModelsView(APIView):
    permission_classes = [api_requires(Capability.MANAGE)]

    @extend_schema(
        operation_id="monitoring_models",
        summary="Each model with results in the last `days` days: counts, flag rate and its band, "
        "verdicts, misses, PSI against its reference, drift alert",
        parameters=[OpenApiParameter("days", int, description="the window, in days (default 30)")],
        responses={200: OpenApiTypes.OBJECT},
    )
    def get(self, request: Request) -> Response:
        try:
            days = window_days_parse(request.query_params.get("days"))
        except MonitoringRequestInvalid as exc:
            raise ValidationError({"error": str(exc)}) from None
        return Response(monitoring_api(days=days))
