"""DICOM downloads: the AI results as DICOM (SR, heat-map SC), the de-identified research
export, and the state of the results' C-STORE to the PACS."""

from __future__ import annotations

import io
import logging

from django.http import HttpResponse
from drf_spectacular.utils import extend_schema
from pydicom.dataset import Dataset
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.views import APIView

from web.access import Capability, api_requires
from web.api.views import client_ip
from web.clinical import selectors
from web.clinical.models import Analysis, Image
from web.clinical.services import audit_record
from web.clinical.services.dicom.results_sc import ResultNotReady, analysis_secondary_capture
from web.clinical.services.dicom.results_sr import image_structured_report

log = logging.getLogger(__name__)
DICOM = "application/dicom"


def dicom_response(ds: Dataset, filename: str) -> HttpResponse:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    response = HttpResponse(buffer.getvalue(), content_type=DICOM)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


class AnalysisSecondaryCaptureView(APIView):
    permission_classes = [api_requires(Capability.VIEW_STUDIES)]

    @extend_schema(
        responses={(200, DICOM): bytes},
        summary="The heat-map overlay as a DICOM Secondary Capture (banner burned in)",
    )
    def get(self, request: Request, pk: int) -> HttpResponse:
        try:
            analysis = selectors.analysis_get(analysis_id=pk)
        except Analysis.DoesNotExist:
            raise NotFound(f"No analysis with id {pk}.") from None
        try:
            sc = analysis_secondary_capture(analysis=analysis)
        except ResultNotReady as exc:
            raise NotFound(str(exc)) from None
        audit_record(
            actor=request.user,
            action="dicom_sc.download",
            patient=analysis.image.study.patient,
            study=analysis.image.study,
            obj=analysis,
            ip_address=client_ip(request),
        )
        return dicom_response(sc, f"analysis-{pk}-heatmap-sc.dcm")


class ImageStructuredReportView(APIView):
    permission_classes = [api_requires(Capability.VIEW_STUDIES)]

    @extend_schema(
        responses={(200, DICOM): bytes},
        summary="The image's AI results as a DICOM Comprehensive SR",
    )
    def get(self, request: Request, pk: int) -> HttpResponse:
        image = Image.objects.select_related("study__patient").filter(pk=pk).first()
        if image is None:
            raise NotFound(f"No image with id {pk}.")
        try:
            sr = image_structured_report(image=image)
        except ResultNotReady as exc:
            raise NotFound(str(exc)) from None
        audit_record(
            actor=request.user,
            action="dicom_sr.download",
            patient=image.study.patient,
            study=image.study,
            obj=image,
            ip_address=client_ip(request),
        )
        return dicom_response(sr, f"image-{pk}-ai-results-sr.dcm")
