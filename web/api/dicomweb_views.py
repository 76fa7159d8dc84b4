"""DICOMweb under /dicom-web/ (Orthanc's path): QIDO-RS, WADO-RS and STOW-RS (PS3.18).

Thin: each view parses the request, calls web.clinical.dicomweb (through the audited reads
for patient data) and writes the answer. Token or session authentication as the rest of the
API; reading needs VIEW_STUDIES, storing UPLOAD (web.access): anonymous 401, no role 403.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse, StreamingHttpResponse
from django.http.request import RawPostDataException
from django.http.response import HttpResponseBase
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.views import APIView

from web.access import Capability, api_requires
from web.api.views import client_ip
from web.clinical.audit.reads import Read, dicomweb_instances_read, reader_of, studies_read
from web.clinical.dicomweb import qido, stow, wado

DICOM_JSON = "application/dicom+json"


def _json(payload: Any, status: int = 200, warnings: list[str] | None = None) -> HttpResponse:
    response = HttpResponse(json.dumps(payload, default=_dicom_text), content_type=DICOM_JSON, status=status)
    if warnings:
        # PS3.18 8.10.3: what the service did not do as asked, in Warning header fields.
        response["Warning"] = ", ".join(f'299 RadTriage: "{_header_text(w)}"' for w in warnings[:20])
    return response


def _dicom_text(value: Any) -> str:
    """A date, time or datetime value pydicom kept as a Python object, in DICOM's own form."""
    original = getattr(value, "original_string", None)
    if original:
        return str(original)
    if isinstance(value, dt.datetime):
        return value.strftime("%Y%m%d%H%M%S.%f")
    if isinstance(value, dt.date):
        return value.strftime("%Y%m%d")
    if isinstance(value, dt.time):
        return value.strftime("%H%M%S.%f")
    raise TypeError(f"{type(value).__name__} is not a DICOM JSON value")


def _error(message: str, status: int) -> HttpResponse:
    response = HttpResponse(json.dumps({"error": message}), content_type="application/json", status=status)
    response["Warning"] = f'299 RadTriage: "{_header_text(message)}"'
    return response


def _header_text(text: str) -> str:
    return text.replace('"', "'").replace("\r", " ").replace("\n", " ").encode("latin-1", "replace").decode()


def base_url(request: Request) -> str:
    return request.build_absolute_uri("/dicom-web/")


class DicomWebView(APIView):
    """Answers are DICOM JSON or DICOM files: DRF's content negotiation applies to its own
    error answers only (401, 403), which are JSON whatever the client accepts."""

    renderer_classes = [JSONRenderer]
    schema = None  # described by PS3.18 and docs/dicom-conformance.md, not by the OpenAPI schema

    def get_permissions(self) -> list[Any]:
        # Reading needs VIEW_STUDIES, storing (POST) UPLOAD: one resource may do both.
        needed = Capability.UPLOAD if self.request.method == "POST" else Capability.VIEW_STUDIES
        return [api_requires(needed)()]

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        return JSONRenderer(), "application/json"


class StoreMixin:
    """STOW-RS: POST instances to /studies (or to one study's URL)."""

    def post(self, request: Request, study: str | None = None) -> HttpResponse:
        try:
            body = request._request.body
        except RequestDataTooBig:
            return _error(
                "The request is larger than the upload limit: send fewer instances per request.", 413
            )
        except RawPostDataException:  # the body was read as a form first
            return _error("The body could not be read as multipart/related.", 400)
        try:
            parts = stow.multipart_split(body, request.META.get("CONTENT_TYPE", ""))
        except stow.StowBodyError as exc:
            return _error(str(exc), exc.status)
        outcome = stow.instances_store(
            parts=parts,
            study_uid=study,
            uploaded_by=request.user,
            ip_address=client_ip(request),
            base_url=base_url(request),
        )
        return _json(outcome.response.to_json_dict(), status=outcome.status, warnings=outcome.failures)


class QueryView(DicomWebView):
    level = "studies"

    def get(self, request: Request, study: str | None = None, series: str | None = None) -> HttpResponse:
        keys = {
            "studies": qido.STUDY_KEYS,
            "series": qido.STUDY_KEYS + qido.SERIES_KEYS,
            "instances": qido.STUDY_KEYS + qido.SERIES_KEYS + qido.INSTANCE_KEYS,
        }[self.level]
        try:
            query = qido.query_parse(dict(request.query_params.lists()), keys=keys)
        except qido.QueryError as exc:
            return _error(str(exc), 400)
        if self.level == "studies":
            studies, answers = qido.studies_search(query)
        elif self.level == "series":
            studies, answers = qido.series_search(query, study_uid=study)
        else:
            studies, answers = qido.instances_search(query, study_uid=study, series_uid=series)
        studies_read(rows=studies, reader=reader_of(request), action=Read.DICOMWEB_QUERY)
        return _json([ds.to_json_dict() for ds in answers], warnings=query.warnings)


class RetrieveView(DicomWebView):
    """A study, a series or an instance as DICOM files (multipart/related)."""

    def get(
        self, request: Request, study: str, series: str | None = None, instance: str | None = None
    ) -> HttpResponseBase:
        accept = request.META.get("HTTP_ACCEPT", "")
        try:
            wado.accepted_transfer_syntax(accept)
            _, found = dicomweb_instances_read(
                reader=reader_of(request), study_uid=study, series_uid=series, sop_uid=instance, what="files"
            )
            answer = wado.dicom_multipart(found, accept)
        except wado.NotFound as exc:
            return _error(str(exc), 404)
        except wado.NotAcceptable as exc:
            return _error(str(exc), 406)
        return StreamingHttpResponse(answer.parts, content_type=answer.content_type)


class MetadataView(DicomWebView):
    def get(
        self, request: Request, study: str, series: str | None = None, instance: str | None = None
    ) -> HttpResponse:
        try:
            _, found = dicomweb_instances_read(
                reader=reader_of(request),
                study_uid=study,
                series_uid=series,
                sop_uid=instance,
                what="metadata",
            )
        except wado.NotFound as exc:
            return _error(str(exc), 404)
        return _json(wado.metadata_json(found, base_url=base_url(request)))


class RenderedView(DicomWebView):
    def get(self, request: Request, study: str, series: str, instance: str) -> HttpResponse:
        try:
            media_type = wado.rendered_media_type(request.META.get("HTTP_ACCEPT", ""))
            window = wado.window_parse(request.query_params.get("window", ""))
        except wado.NotAcceptable as exc:
            return _error(str(exc), 406)
        except ValueError as exc:
            return _error(str(exc), 400)
        try:
            _, [found] = dicomweb_instances_read(
                reader=reader_of(request),
                study_uid=study,
                series_uid=series,
                sop_uid=instance,
                what="rendered",
            )
            picture = wado.instance_rendered(found, media_type=media_type, window=window)
        except wado.NotFound as exc:
            return _error(str(exc), 404)
        except wado.NotAcceptable as exc:
            return _error(str(exc), 406)
        return HttpResponse(picture, content_type=media_type)


class StudiesView(StoreMixin, QueryView):
    """/studies: QIDO-RS search (GET), STOW-RS store (POST)."""

    level = "studies"


class StudyView(StoreMixin, RetrieveView):
    """/studies/{study}: WADO-RS retrieve (GET), STOW-RS store into this study (POST)."""
