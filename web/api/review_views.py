"""The reading room's API: the full-resolution image for the viewer, annotations, verdicts.

Seeing anything needs Capability.VIEW_STUDIES; drawing, editing and judging need
Capability.REVIEW, and only an annotation's author may change or delete it.
"""

from __future__ import annotations

import logging
from typing import Any

from django.http import HttpResponse
from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import XRayDecodeError
from web.access import Capability, api_requires
from web.api.serializers import (
    AnnotationChangeSerializer,
    AnnotationCreateSerializer,
    AnnotationSerializer,
    ImageDisplaySerializer,
    VerdictCountSerializer,
    VerdictInputSerializer,
    VerdictSerializer,
)
from web.api.views import client_ip
from web.clinical.analysis.queries import analysis_get
from web.clinical.audit.reads import Read, analysis_read, annotation_read, image_read, reader_of
from web.clinical.models import Analysis, Annotation, Image
from web.clinical.review.annotations import (
    ReviewForbidden,
    ReviewRejected,
    annotation_create,
    annotation_delete,
    annotation_update,
    verdict_set,
)
from web.clinical.review.queries import image_annotations, verdict_counts
from web.clinical.viewer import image_display

log = logging.getLogger(__name__)

CanView = api_requires(Capability.VIEW_STUDIES)
CanReview = api_requires(Capability.REVIEW)


class ReadOrReview(APIView):
    """GET/HEAD need VIEW_STUDIES; every change needs REVIEW."""

    def get_permissions(self) -> list[Any]:
        if self.request.method in ("GET", "HEAD", "OPTIONS"):
            return [CanView()]
        return [CanReview()]


def _image(pk: int) -> Image:
    image = Image.objects.select_related("study__patient").filter(pk=pk).first()
    if image is None:
        raise NotFound(f"No image with id {pk}.")
    return image


def _image_read(request: Request, pk: int, action: str) -> Image:
    """The image, for showing to the person asking (web.clinical.audit.reads records it)."""
    try:
        return image_read(image_id=pk, reader=reader_of(request), action=action)
    except Image.DoesNotExist:
        raise NotFound(f"No image with id {pk}.") from None


def _display(image: Image) -> tuple[dict[str, Any], bytes]:
    try:
        return image_display(image=image)
    except (FileNotFoundError, ValueError, XRayDecodeError):
        log.warning("Pixels of image %s cannot be read", image.pk, exc_info=True)
        raise NotFound(f"The stored file of image {image.pk} is missing or unreadable.") from None


class ImageDisplayView(APIView):
    permission_classes = [CanView]

    @extend_schema(responses=ImageDisplaySerializer, summary="How to show an image at full resolution")
    def get(self, request: Request, pk: int) -> Response:
        image = _image_read(request, pk, Read.DISPLAY)
        meta, _ = _display(image)
        body = {
            "id": image.pk,
            "width": image.width,
            "height": image.height,
            "format": image.format,
            "pixels_url": reverse("api:image-pixels", args=[image.pk]),
            **{k: v for k, v in meta.items() if k != "content_type"},
        }
        return Response(ImageDisplaySerializer(body).data)


class ImagePixelsView(APIView):
    permission_classes = [CanView]

    @extend_schema(
        responses={(200, "image/png"): bytes, (200, "image/jpeg"): bytes},
        summary="The full-resolution pixels, lossless (DICOM: 16-bit codes packed in an RGB PNG)",
    )
    def get(self, request: Request, pk: int) -> HttpResponse:
        image = _image_read(request, pk, Read.PIXELS)
        meta, data = _display(image)
        response = HttpResponse(data, content_type=meta["content_type"])
        response["Cache-Control"] = "private, max-age=300"
        return response


class ImageAnnotationsView(ReadOrReview):
    @extend_schema(responses=AnnotationSerializer(many=True), summary="The team's annotations on an image")
    def get(self, request: Request, pk: int) -> Response:
        _image_read(request, pk, Read.ANNOTATIONS)
        return Response(AnnotationSerializer(image_annotations(image_id=pk), many=True).data)

    @extend_schema(
        request=AnnotationCreateSerializer,
        responses={201: AnnotationSerializer},
        summary="Draw an annotation (shapes in image pixels) and/or write a note on an image",
    )
    def post(self, request: Request, pk: int) -> Response:
        image = _image(pk)
        form = AnnotationCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        try:
            annotation = annotation_create(
                image=image,
                author=request.user,
                shapes=form.validated_data.get("shapes", []),
                note=form.validated_data.get("note", ""),
                missed_condition=form.validated_data.get("missed_condition", ""),
                ip_address=client_ip(request),
            )
        except ReviewRejected as exc:
            raise ValidationError({"error": str(exc)}) from None
        return Response(AnnotationSerializer(annotation).data, status=status.HTTP_201_CREATED)


class AnnotationDetailView(ReadOrReview):
    def _get(self, pk: int) -> Annotation:
        annotation = (
            Annotation.objects.select_related("author", "image__study__patient").filter(pk=pk).first()
        )
        if annotation is None:
            raise NotFound(f"No annotation with id {pk}.")
        return annotation

    @extend_schema(responses=AnnotationSerializer, summary="One annotation")
    def get(self, request: Request, pk: int) -> Response:
        try:
            annotation = annotation_read(annotation_id=pk, reader=reader_of(request))
        except Annotation.DoesNotExist:
            raise NotFound(f"No annotation with id {pk}.") from None
        return Response(AnnotationSerializer(annotation).data)

    @extend_schema(
        request=AnnotationChangeSerializer,
        responses=AnnotationSerializer,
        summary="Change one's own annotation (its author only)",
    )
    def patch(self, request: Request, pk: int) -> Response:
        annotation = self._get(pk)
        form = AnnotationChangeSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        try:
            annotation = annotation_update(
                annotation=annotation,
                actor=request.user,
                shapes=form.validated_data.get("shapes"),
                note=form.validated_data.get("note"),
                ip_address=client_ip(request),
            )
        except ReviewForbidden as exc:
            raise PermissionDenied(str(exc)) from None
        except ReviewRejected as exc:
            raise ValidationError({"error": str(exc)}) from None
        return Response(AnnotationSerializer(annotation).data)

    @extend_schema(responses={204: None}, summary="Delete one's own annotation (its author only)")
    def delete(self, request: Request, pk: int) -> Response:
        try:
            annotation_delete(annotation=self._get(pk), actor=request.user, ip_address=client_ip(request))
        except ReviewForbidden as exc:
            raise PermissionDenied(str(exc)) from None
        except ReviewRejected as exc:
            raise ValidationError({"error": str(exc)}) from None
        return Response(status=status.HTTP_204_NO_CONTENT)


class AnalysisVerdictView(ReadOrReview):
    def _analysis(self, pk: int) -> Analysis:
        try:
            return analysis_get(analysis_id=pk)
        except Analysis.DoesNotExist:
            raise NotFound(f"No analysis with id {pk}.") from None

    @extend_schema(responses=VerdictSerializer(many=True), summary="The radiologists' verdicts on a result")
    def get(self, request: Request, pk: int) -> Response:
        try:
            analysis = analysis_read(analysis_id=pk, reader=reader_of(request), action=Read.VERDICTS)
        except Analysis.DoesNotExist:
            raise NotFound(f"No analysis with id {pk}.") from None
        rows = analysis.annotations.exclude(verdict="").select_related("author", "analysis")
        return Response(VerdictSerializer(rows, many=True).data)

    @extend_schema(
        request=VerdictInputSerializer,
        responses={200: VerdictSerializer, 201: VerdictSerializer},
        summary="Set one's verdict on an AI result (agree, disagree and why, uncertain) with a comment",
    )
    def put(self, request: Request, pk: int) -> Response:
        analysis = self._analysis(pk)
        form = VerdictInputSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        try:
            row, created = verdict_set(
                analysis=analysis,
                author=request.user,
                verdict=form.validated_data["verdict"],
                comment=form.validated_data["comment"],
                reason=form.validated_data["reason"],
                ip_address=client_ip(request),
            )
        except ReviewRejected as exc:
            raise ValidationError({"error": str(exc)}) from None
        return Response(
            VerdictSerializer(row).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class VerdictCountsView(APIView):
    permission_classes = [CanView]

    @extend_schema(
        responses=VerdictCountSerializer(many=True),
        summary="Current verdicts counted per model (id, checksum), condition and verdict",
    )
    def get(self, request: Request) -> Response:
        return Response(VerdictCountSerializer(verdict_counts(), many=True).data)
