"""Worklist actions over the API (REVIEW): claim a study, release it, take it over from a
colleague, mark it reviewed. A refusal answers {"error": why} with 409 (the study's holder or
its state does not allow it: the message names who and why) or 404."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from web.access import Capability, api_requires, client_ip
from web.api.schema import refused
from web.api.serializers import StudyListSerializer, TextField
from web.clinical.worklist.claims import (
    study_claim,
    study_mark_reviewed,
    study_release,
    study_take_over,
)
from web.clinical.worklist.queries import study_worklist
from web.clinical.worklist.states import StudyActionRefused


def _answer(pk: int, action: Callable[[], Any]) -> Response:
    try:
        action()
    except StudyActionRefused as exc:
        return Response({"error": str(exc)}, status=exc.status_code)
    study = study_worklist().get(pk=pk)
    return Response(StudyListSerializer(study).data, status=status.HTTP_200_OK)


class _StudyActionView(APIView):
    permission_classes = [api_requires(Capability.REVIEW)]
    service: Callable[..., Any]

    @extend_schema(
        request=None,
        responses={
            200: StudyListSerializer,
            409: refused("The study's holder or its state does not allow it."),
        },
    )
    def post(self, request: Request, pk: int) -> Response:
        service = type(self).service
        return _answer(pk, lambda: service(study_id=pk, user=request.user, ip_address=client_ip(request)))


class StudyClaimView(_StudyActionView):
    """Assign the study to me. 409 when another radiologist holds it."""

    service = study_claim


class StudyReleaseView(_StudyActionView):
    """Give my study back to the worklist. 409 unless I hold it."""

    service = study_release


class StudyReviewedView(_StudyActionView):
    """Mark my study reviewed: read, no report here (it may live in the RIS). Never reported:
    only signing a report does that. 409 unless I hold it, or once it is reported."""

    service = study_mark_reviewed


class TakeOverSerializer(serializers.Serializer):
    reason = TextField(required=False, allow_blank=True, max_length=500, default="")


class StudyTakeOverView(APIView):
    """Take the study over from the colleague who holds it: I hold it, and its unsigned draft
    becomes mine to continue (its first author kept on it; audited with both names). 409 when
    there is nothing to take over."""

    permission_classes = [api_requires(Capability.REVIEW)]

    @extend_schema(
        request=TakeOverSerializer,
        responses={
            200: StudyListSerializer,
            409: refused("Nothing to take over: no one else holds the study."),
        },
    )
    def post(self, request: Request, pk: int) -> Response:
        form = TakeOverSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        reason = form.validated_data["reason"]
        return _answer(
            pk,
            lambda: study_take_over(
                study_id=pk, user=request.user, reason=reason, ip_address=client_ip(request)
            ),
        )
