"""DICOM downloads: the AI results as DICOM (SR, heat-map SC), the de-identified research
export, and the state of the results' C-STORE to the PACS."""

from __future__ import annotations

import io
import logging
import tempfile
from typing import Any

from django.http import FileResponse, HttpResponse
from drf_spectacular.utils import extend_schema
from pydicom.dataset import Dataset
from rest_framework import serializers
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from web.access import Capability, api_requires
from web.api.schema import refused
from web.api.views import client_ip
from web.clinical.audit.reads import Read, analysis_read, image_read, reader_of
from web.clinical.audit.records import audit_record
from web.clinical.dicom.deidentify import studies_export_deidentified
from web.clinical.dicom.pacs_send import pacs_sends_queue
from web.clinical.dicom.reference import ResultNotReady
from web.clinical.models import Analysis, Batch, BatchItem, DicomSend, Image, Study

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
            analysis = analysis_read(analysis_id=pk, reader=reader_of(request), action=Read.DICOM_SC)
        except Analysis.DoesNotExist:
            raise NotFound(f"No analysis with id {pk}.") from None
        # highdicom (0.3 s to import) only where it is used: every process that loads the URLs
        # (each manage.py command, through its system checks) imported it.
        from web.clinical.reporting.dicom_sc import analysis_secondary_capture

        try:
            sc = analysis_secondary_capture(analysis=analysis)
        except ResultNotReady as exc:
            raise NotFound(str(exc)) from None
        return dicom_response(sc, f"analysis-{pk}-heatmap-sc.dcm")


class ImageStructuredReportView(APIView):
    permission_classes = [api_requires(Capability.VIEW_STUDIES)]

    @extend_schema(
        responses={(200, DICOM): bytes},
        summary="The image's AI results as a DICOM Comprehensive SR",
    )
    def get(self, request: Request, pk: int) -> HttpResponse:
        try:
            image = image_read(image_id=pk, reader=reader_of(request), action=Read.DICOM_SR)
        except Image.DoesNotExist:
            raise NotFound(f"No image with id {pk}.") from None
        from web.clinical.reporting.dicom_sr import image_structured_report

        try:
            sr = image_structured_report(image=image)
        except ResultNotReady as exc:
            raise NotFound(str(exc)) from None
        return dicom_response(sr, f"image-{pk}-ai-results-sr.dcm")


MAX_EXPORT_STUDIES = 500
ZIP = "application/zip"


def deidentified_zip_response(request: Request, studies: list[Study], filename: str) -> FileResponse:
    """The zip, written to a temporary file (never whole in memory), and one audit row."""
    out = tempfile.TemporaryFile()  # noqa: SIM115 - FileResponse closes it once sent
    manifest = studies_export_deidentified(studies=studies, out=out)
    out.seek(0)
    audit_record(
        actor=request.user,
        action="export.deidentified",
        patient=studies[0].patient if len(studies) == 1 else None,
        study=studies[0] if len(studies) == 1 else None,
        ip_address=client_ip(request),
        detail={
            "study_ids": [s.pk for s in studies],
            "instances": manifest["instances"],
            "not_exported": len(manifest["not_exported"]),
        },
    )
    return FileResponse(out, content_type=ZIP, as_attachment=True, filename=filename)


class StudyDeidentifiedExportView(APIView):
    permission_classes = [api_requires(Capability.MANAGE)]

    @extend_schema(
        responses={(200, ZIP): bytes},
        summary="A study de-identified for research (DICOM PS3.15 Annex E basic profile), as a zip",
    )
    def get(self, request: Request, pk: int) -> FileResponse:
        study = Study.objects.select_related("patient").filter(pk=pk).first()
        if study is None:
            raise NotFound(f"No study with id {pk}.")
        return deidentified_zip_response(request, [study], f"study-{pk}-deidentified.zip")


class BatchExportSerializer(serializers.Serializer):
    """Which studies: `study_ids`, or `batch_id` (the studies of a batch's files), not both."""

    study_ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1),
        allow_empty=False,
        max_length=MAX_EXPORT_STUDIES,
        required=False,
    )
    batch_id = serializers.IntegerField(min_value=1, required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("study_ids" in attrs) == ("batch_id" in attrs):
            raise serializers.ValidationError("Give either study_ids or batch_id.")
        return attrs


class DeidentifiedExportView(APIView):
    permission_classes = [api_requires(Capability.MANAGE)]

    @extend_schema(
        request=BatchExportSerializer,
        responses={(200, ZIP): bytes},
        summary="Several studies de-identified together (one UID map across them), as a zip",
    )
    def post(self, request: Request) -> FileResponse:
        form = BatchExportSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        if "batch_id" in form.validated_data:
            return self._batch(request, form.validated_data["batch_id"])
        wanted = list(dict.fromkeys(form.validated_data["study_ids"]))
        studies = list(Study.objects.select_related("patient").filter(pk__in=wanted).order_by("pk"))
        missing = sorted(set(wanted) - {s.pk for s in studies})
        if missing:
            raise ValidationError({"study_ids": f"No study with id {', '.join(map(str, missing))}."})
        return deidentified_zip_response(request, studies, "studies-deidentified.zip")

    def _batch(self, request: Request, batch_id: int) -> FileResponse:
        if not Batch.objects.filter(pk=batch_id).exists():
            raise ValidationError({"batch_id": f"No batch with id {batch_id}."})
        files = BatchItem.objects.filter(batch_id=batch_id, image__isnull=False)
        studies = list(
            Study.objects.select_related("patient")
            .filter(pk__in=files.values("image__study_id"))
            .order_by("pk")
        )
        if not studies:
            raise ValidationError({"batch_id": f"Batch {batch_id} stored no image to export."})
        if len(studies) > MAX_EXPORT_STUDIES:
            raise ValidationError(
                {"batch_id": f"Batch {batch_id} has {len(studies)} studies; at most {MAX_EXPORT_STUDIES}."}
            )
        return deidentified_zip_response(request, studies, f"batch-{batch_id}-deidentified.zip")


class DicomSendSerializer(serializers.ModelSerializer):
    destination = serializers.SerializerMethodField()

    class Meta:
        model = DicomSend
        fields = [
            "id",
            "destination",
            "state",
            "attempts",
            "last_error",
            "instances",
            "sent_at",
            "updated_at",
        ]

    def get_destination(self, send: DicomSend) -> str:
        return f"{send.ae_title}@{send.host}:{send.port}"


class ImagePacsSendsView(APIView):
    """GET: where the image's AI results were C-STOREd and how that went. POST: send them
    (again) now to the configured PACS; 409 when none is configured or nothing is finished."""

    def get_permissions(self) -> list:
        capability = Capability.VIEW_STUDIES if self.request.method == "GET" else Capability.REVIEW
        return [api_requires(capability)()]

    @extend_schema(responses={200: DicomSendSerializer(many=True)}, summary="The results' sends to the PACS")
    def get(self, request: Request, pk: int) -> Response:
        try:
            image = image_read(image_id=pk, reader=reader_of(request), action=Read.PACS_SENDS)
        except Image.DoesNotExist:
            raise NotFound(f"No image with id {pk}.") from None
        return Response(DicomSendSerializer(image.dicom_sends.all(), many=True).data)

    @extend_schema(
        request=None,
        responses={
            202: DicomSendSerializer(many=True),
            409: refused("No PACS is configured, or the image's analyses are not finished."),
        },
        summary="Send to the PACS now",
    )
    def post(self, request: Request, pk: int) -> Response:
        image = Image.objects.select_related("study__patient").filter(pk=pk).first()
        if image is None:
            raise NotFound(f"No image with id {pk}.")
        sends = pacs_sends_queue(image_ids=[pk])
        if not sends:
            return Response(
                {"error": "Not sent: no PACS is configured, or the image's analyses are not finished."},
                status=409,
            )
        audit_record(
            actor=request.user,
            action="pacs_send.request",
            patient=image.study.patient,
            study=image.study,
            obj=image,
            ip_address=client_ip(request),
        )
        return Response(DicomSendSerializer(sends, many=True).data, status=202)
