"""Batches through the REST API: create one from a .zip or many files, list them, read one
(its progress and summary). Thin: parse, call one service, serialise."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from web.access import Capability, api_requires
from web.api.parsers import MultiPartParser
from web.api.serializers import UploadFieldsSerializer
from web.api.views import client_ip, upload_fields
from web.clinical.batches.batches import batch_import, batch_progress
from web.clinical.batches.summary import batch_summary
from web.clinical.ingest.archive_safety import ArchiveRefused, UploadedFiles, ZipFiles
from web.clinical.models import Batch


class BatchCreateSerializer(UploadFieldsSerializer):
    """A .zip archive (`archive`) or several files (repeat `files`). PNG/JPEG files take their
    patient from a patients.csv in the archive, else the form's patient_id; a file with neither
    is filed as unidentified (a generated UNIDENTIFIED-<id>, named "(unidentified)"), as on
    every upload route, and its item says so."""

    archive = serializers.FileField(required=False)
    files = serializers.ListField(child=serializers.FileField(allow_empty_file=True), required=False)
    overnight = serializers.BooleanField(required=False, default=False)

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        if bool(data.get("archive")) == bool(data.get("files")):
            raise serializers.ValidationError("Send either one .zip as `archive` or the images as `files`.")
        return data


def batch_body(batch: Batch) -> dict[str, Any]:
    return {
        **batch_summary(batch),
        "created_at": batch.created_at,
        "created_by": batch.created_by.get_username() if batch.created_by else None,
        "started_at": batch.started_at,
        "finished_at": batch.finished_at,
        "progress": batch_progress(batch),
        "page": f"/batches/{batch.pk}/",
        "worklist": f"/?batch={batch.pk}",
    }


class BatchListView(APIView):
    parser_classes = [MultiPartParser]

    def get_permissions(self) -> list[Any]:
        capability = Capability.UPLOAD if self.request.method == "POST" else Capability.VIEW_STUDIES
        return [api_requires(capability)()]

    @extend_schema(
        operation_id="batches_list",
        summary="The latest batches (100), newest first",
        responses={200: OpenApiTypes.OBJECT},
    )
    def get(self, request: Request) -> Response:
        batches = Batch.objects.select_related("created_by")[:100]
        return Response(
            {
                "results": [
                    {
                        "batch": b.pk,
                        "created_at": b.created_at,
                        "created_by": b.created_by.get_username() if b.created_by else None,
                        "source": b.source,
                        "source_name": b.source_name,
                        "schedule": b.schedule,
                        "state": b.state,
                        "files": b.files_total,
                        "accepted": b.accepted,
                        "duplicates": b.duplicates,
                        "refused": b.refused,
                        "overran_window": b.overran_window,
                        "page": f"/batches/{b.pk}/",
                    }
                    for b in batches
                ]
            }
        )

    @extend_schema(
        request=BatchCreateSerializer,
        summary="Import a .zip or many X-rays as one batch",
        responses={201: OpenApiTypes.OBJECT},
    )
    def post(self, request: Request) -> Response:
        form = BatchCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        fields = upload_fields(data)
        common = {
            "conditions": data["conditions"],
            "overnight": data["overnight"],
            "fields": fields,
            "uploaded_by": request.user,
            "ip_address": client_ip(request),
        }
        if data.get("archive"):
            archive = data["archive"]
            try:
                with ZipFiles(archive.file) as files:
                    batch = batch_import(
                        files=files, source=Batch.Source.ARCHIVE, source_name=archive.name or "", **common
                    )
            except ArchiveRefused as exc:
                return Response({"error": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        else:
            uploads = [(f.name or "", f.read()) for f in data["files"]]
            batch = batch_import(files=UploadedFiles(uploads), source=Batch.Source.BROWSER, **common)
        return Response(batch_body(batch), status=status.HTTP_201_CREATED)


class BatchDetailView(APIView):
    permission_classes = [api_requires(Capability.VIEW_STUDIES)]

    @extend_schema(
        summary="One batch: what became of its files, its progress and results",
        responses={200: OpenApiTypes.OBJECT},
    )
    def get(self, request: Request, pk: int) -> Response:
        return Response(batch_body(get_object_or_404(Batch, pk=pk)))
