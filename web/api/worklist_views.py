"""Worklist actions over the API: claim a study, release it, mark it reviewed (REVIEW)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from web.access import Capability, api_requires
from web.api.serializers import StudyListSerializer
from web.api.views import client_ip
from web.clinical.worklist.claims import (
    WorklistActionRefused,
    study_claim,
    study_mark_reviewed,
    study_release,
)
from web.clinical.worklist.queries import study_worklist


class _StudyActionView(APIView):
    permission_classes = [api_requires(Capability.REVIEW)]
    service: Callable[..., Any]

    @extend_schema(request=None, responses={200: StudyListSerializer})
    def post(self, request: Request, pk: int) -> Response:
        try:
            type(self).service(study_id=pk, user=request.user, ip_address=client_ip(request))
        except WorklistActionRefused as exc:
            return Response({"error": str(exc)}, status=exc.status_code)
        study = study_worklist().get(pk=pk)
        return Response(StudyListSerializer(study).data, status=status.HTTP_200_OK)


class StudyClaimView(_StudyActionView):
    """Assign the study to me. 409 when another radiologist holds it."""

    service = study_claim


class StudyReleaseView(_StudyActionView):
    """Give my study back to the worklist. 409 unless I hold it."""

    service = study_release


class StudyReviewedView(_StudyActionView):
    """Mark my study reviewed (status reported, until reports exist). 409 unless I hold it."""

    service = study_mark_reviewed
