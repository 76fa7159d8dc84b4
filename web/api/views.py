"""REST API views: parse, call one service or selector, serialise."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.contrib.auth.signals import user_logged_in
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import TemporaryFileUploadHandler
from django.http import FileResponse, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer
from rest_framework.views import APIView

from core.conditions import CONDITIONS
from core.errors import XRayDecodeError
from web.access import CanViewStudies, Capability, api_requires, client_ip
from web.api.authentication import token_expired
from web.api.pagination import WorklistPagination
from web.api.parsers import NAME_NOT_UTF8_MESSAGE, MultiPartParser, name_not_utf8
from web.api.schema import refused
from web.api.serializers import (
    PRIORITIES,
    AnalysisSerializer,
    AnnotationSerializer,
    BulkUploadResultSerializer,
    BulkUploadSerializer,
    HotRegionSerializer,
    StudyDetailSerializer,
    StudyListSerializer,
    TextField,
    UploadResultSerializer,
    UploadSerializer,
)
from web.clinical.analysis.jobs import image_analyses_request
from web.clinical.audit.reads import Read, analysis_read, image_read, reader_of, studies_read, study_read
from web.clinical.ingest.conflicts import UploadConflictError
from web.clinical.ingest.parts import (
    BulkUploadItem,
    UploadFields,
    UploadRejected,
    body_part_proposal,
    upload_outcome,
)
from web.clinical.ingest.uploads import STORAGE_FAILURES, image_upload, images_upload_many
from web.clinical.models import Analysis, Image, Study
from web.clinical.review.annotations import ReviewRejected, annotation_create, verdict_set
from web.clinical.viewer import (
    OVERLAY_ALPHA,
    analysis_heatmap_color_png,
    analysis_heatmap_overlay_png,
    analysis_hot_region,
)
from web.clinical.worklist.queries import (
    ASSIGNED_CHOICES,
    REGION_ALIASES,
    WORKLIST_REGIONS,
    WORKLIST_SORTS,
    WorklistFilterError,
    study_worklist,
    worklist_filters_parse,
    worklist_rows,
    worklist_strongest,
)

log = logging.getLogger(__name__)


def upload_fields(data: dict[str, Any]) -> UploadFields:
    return UploadFields(
        patient_id=data.get("patient_id", ""),
        patient_name=data.get("patient_name", ""),
        birth_date=data.get("birth_date"),
        sex=data.get("sex", ""),
        study_instance_uid=data.get("study_instance_uid", ""),
        accession_number=data.get("accession_number", ""),
        study_date=data.get("study_date"),
        modality=data.get("modality", ""),
        body_part=data.get("body_part", ""),
        description=data.get("description", ""),
        priority=PRIORITIES[data["priority"]],
    )


def too_large_message(size: int) -> str:
    return (
        f"The file is {size:,} bytes; the largest accepted is {settings.RADTRIAGE_MAX_UPLOAD_BYTES:,} bytes."
    )


class UploadView(APIView):
    permission_classes = [api_requires(Capability.UPLOAD)]
    parser_classes = [MultiPartParser]  # a file travels in multipart only (the schema says so)

    @extend_schema(
        request=UploadSerializer,
        responses={201: UploadResultSerializer, 200: UploadResultSerializer},
        summary="Upload one X-ray (DICOM, PNG or JPEG) and enqueue its analyses",
    )
    def post(self, request: Request) -> Response:
        form = UploadSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        upload = data["file"]
        if upload.size > settings.RADTRIAGE_MAX_UPLOAD_BYTES:
            return Response(
                {"error": too_large_message(upload.size)}, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
            )
        if name_not_utf8(upload):
            return Response({"error": NAME_NOT_UTF8_MESSAGE}, status=status.HTTP_400_BAD_REQUEST)
        try:
            result = image_upload(
                data=upload,
                filename=upload.name or "",
                fields=upload_fields(data),
                conditions=data["conditions"],
                queue=data["queue"],
                uploaded_by=request.user,
                ip_address=client_ip(request),
            )
        except UploadConflictError as exc:
            return Response({"error": str(exc), "conflict_id": exc.conflict.pk}, status=exc.status_code)
        except UploadRejected as exc:
            return Response({"error": str(exc)}, status=exc.status_code)
        study = study_worklist().get(pk=result.image.study_id)
        image = Image.objects.prefetch_related("analyses").get(pk=result.image.pk)
        body = UploadResultSerializer(
            {
                "created": result.created,
                "warnings": result.warnings,
                "outcome": upload_outcome(result),
                "study": study,
                "image": image,
            }
        ).data
        return Response(body, status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK)


class BulkUploadView(APIView):
    permission_classes = [api_requires(Capability.UPLOAD)]
    parser_classes = [MultiPartParser]
    serializer_class = BulkUploadSerializer  # for the schema (and its checks)

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        # Every file of a batch goes to a temporary file as it arrives, however small: a
        # request of hundreds of MB never sits in the web process's memory.
        request.upload_handlers = [TemporaryFileUploadHandler(request)]
        return super().dispatch(request, *args, **kwargs)

    @extend_schema(
        request=BulkUploadSerializer,
        responses={
            201: BulkUploadResultSerializer,
            200: BulkUploadResultSerializer,
            400: BulkUploadResultSerializer,
        },
        summary="Upload several X-rays at once; their analyses run in batches",
    )
    def post(self, request: Request) -> Response:
        """Each file is stored or refused on its own (a refused file leaves nothing behind);
        `results` says which, in the order sent. Analyses go to the batch queue unless
        queue=interactive. 201 when any file was stored, 200 when all were already there,
        400 when none was accepted."""
        form = BulkUploadSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        refused: dict[int, BulkUploadItem] = {}
        files: list[tuple[str, UploadedFile]] = []
        for index, upload in enumerate(data["files"]):
            if upload.size > settings.RADTRIAGE_MAX_UPLOAD_BYTES:
                refused[index] = BulkUploadItem(
                    upload.name or "",
                    error=too_large_message(upload.size),
                    status_code=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                )
            elif name_not_utf8(upload):
                refused[index] = BulkUploadItem(
                    upload.name or "", error=NAME_NOT_UTF8_MESSAGE, status_code=status.HTTP_400_BAD_REQUEST
                )
            else:
                files.append((upload.name or "", upload))  # read one at a time by the service
        stored = iter(
            images_upload_many(
                files=files,
                fields=upload_fields(data),
                conditions=data["conditions"],
                queue=data["queue"],
                uploaded_by=request.user,
                ip_address=client_ip(request),
            )
        )
        items = [refused.get(i) or next(stored) for i in range(len(data["files"]))]
        body = BulkUploadResultSerializer(bulk_upload_summary(items)).data
        code: int
        if body["created"]:
            code = status.HTTP_201_CREATED
        elif body["rejected"] and all(i.status_code in STORAGE_FAILURES for i in items):
            # All refused by the storage: full (507) only if every one was; out of reach wins.
            worst = max(items, key=lambda i: i.status_code == status.HTTP_503_SERVICE_UNAVAILABLE)
            code = worst.status_code
            body["error"] = worst.error
        elif body["rejected"]:
            code = status.HTTP_400_BAD_REQUEST
            body["error"] = f"None of the {len(items)} files was accepted; see results."
        else:
            code = status.HTTP_200_OK
        return Response(body, status=code)


def bulk_upload_summary(items: list[BulkUploadItem]) -> dict[str, Any]:
    results = []
    for item in items:
        result = item.result
        results.append(
            {
                "filename": item.filename,
                "status": "rejected" if result is None else "created" if result.created else "duplicate",
                "error": item.error,
                "outcome": upload_outcome(result, item.error),
                "warnings": result.warnings if result else [],
                "image_id": result.image.pk if result else None,
                "study_id": result.image.study_id if result else None,
                "analyses": [
                    {"id": a.pk, "condition": a.condition, "state": a.state}
                    for a in (result.analyses if result else [])
                ],
            }
        )
    counts = {s: sum(r["status"] == s for r in results) for s in ("created", "duplicate", "rejected")}
    return {
        "created": counts["created"],
        "duplicates": counts["duplicate"],
        "rejected": counts["rejected"],
        "results": results,
    }


def _blank_or(schema: dict[str, Any]) -> dict[str, Any]:
    """A worklist filter's schema: the value, or empty for no filter (as the page's form sends)."""
    return {"anyOf": [schema, {"type": "string", "maxLength": 0}]}


def _one_of(values: Any) -> dict[str, Any]:
    return _blank_or({"type": "string", "enum": list(values)})


@extend_schema(
    parameters=[
        OpenApiParameter("status", _one_of(Study.Status.values)),
        OpenApiParameter(
            "condition", _one_of(CONDITIONS), description="studies with an analysis of this condition"
        ),
        OpenApiParameter(
            "positive",
            bool,
            description="only studies with an AI finding; with condition, a finding for that condition",
        ),
        OpenApiParameter(
            "region",
            _one_of([*WORKLIST_REGIONS, *REGION_ALIASES]),
            description="the body region rows show (region); chest, limb, knee, other still accepted",
        ),
        OpenApiParameter(
            "date_from", _blank_or({"type": "string", "format": "date"}), description="study date from"
        ),
        OpenApiParameter(
            "date_to", _blank_or({"type": "string", "format": "date"}), description="study date to"
        ),
        OpenApiParameter("assigned", _one_of(ASSIGNED_CHOICES)),
        OpenApiParameter("q", str, description="patient name, patient ID or accession contains"),
        OpenApiParameter(
            "sort",
            _one_of([*WORKLIST_SORTS, *(f"-{key}" for key in WORKLIST_SORTS)]),
            description="a column to sort by, '-' first for descending; none: the triage order",
        ),
        OpenApiParameter(
            "alert",
            bool,
            description="only open studies radiologists are alerted to: STAT, or a most urgent AI finding",
        ),
        OpenApiParameter(
            "batch", _blank_or({"type": "integer", "minimum": 0}), description="only this batch's studies"
        ),
    ]
)
class StudyListView(generics.ListAPIView):
    """The worklist in triage order (see study_worklist), with its filters."""

    permission_classes = [CanViewStudies]
    serializer_class = StudyListSerializer
    pagination_class = WorklistPagination

    def get_queryset(self):
        try:
            filters = worklist_filters_parse(self.request.query_params)
        except WorklistFilterError as exc:
            raise ValidationError({exc.field: str(exc)}) from None
        return worklist_rows(filters=filters, user=self.request.user)

    def paginate_queryset(self, queryset: Any) -> Any:
        page = super().paginate_queryset(queryset)
        if page is not None:
            worklist_strongest(page)  # each row's strongest_result: one query for the page
            studies_read(rows=page, reader=reader_of(self.request))  # the rows this person sees
        return page


class StudyDetailView(generics.RetrieveAPIView):
    permission_classes = [CanViewStudies]
    serializer_class = StudyDetailSerializer

    def get_object(self) -> Study:
        try:
            return study_read(study_id=self.kwargs["pk"], reader=reader_of(self.request), full=True)
        except Study.DoesNotExist:
            raise NotFound(f"No study with id {self.kwargs['pk']}.") from None


class AnalysisDetailView(generics.RetrieveAPIView):
    permission_classes = [CanViewStudies]
    serializer_class = AnalysisSerializer

    def get_object(self) -> Analysis:
        try:
            return analysis_read(
                analysis_id=self.kwargs["pk"], reader=reader_of(self.request), action=Read.ANALYSIS
            )
        except Analysis.DoesNotExist:
            raise NotFound(f"No analysis with id {self.kwargs['pk']}.") from None


class AnalysisHeatmapView(APIView):
    permission_classes = [CanViewStudies]

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "kind",
                str,
                enum=["overlay", "raw", "color", "region"],
                description="overlay (default): colour Grad-CAM over the X-ray at "
                "full resolution; raw: 8-bit grayscale heat map at the "
                "model's resolution; color: the heat map alone in JET "
                "colours, to lay over the X-ray at any intensity; region: the hot "
                "region (JSON: its outline, box and peak where the map reaches half its peak, "
                "as fractions of the image's width and height)",
            ),
            OpenApiParameter(
                "alpha",
                {"type": "number", "minimum": 0, "maximum": 1},
                description="overlay only: the heat map's "
                f"intensity, 0 (X-ray alone) to 1 (default {OVERLAY_ALPHA})",
            ),
        ],
        responses={(200, "image/png"): bytes, (200, "application/json"): HotRegionSerializer},
        summary="Download the Grad-CAM heat map of a finished analysis",
    )
    def get(self, request: Request, pk: int) -> HttpResponseBase:
        kind = request.query_params.get("kind", "overlay")
        if kind not in ("overlay", "raw", "color", "region"):
            raise ValidationError({"kind": "Use kind=overlay, kind=raw, kind=color or kind=region."})
        alpha = _alpha(request.query_params.get("alpha"))
        try:
            analysis = analysis_read(
                analysis_id=pk, reader=reader_of(request), action=Read.HEATMAP, detail={"kind": kind}
            )
        except Analysis.DoesNotExist:
            raise NotFound(f"No analysis with id {pk}.") from None
        if not analysis.heatmap_raw:
            raise NotFound(f"Analysis {pk} has no heat map yet (state: {analysis.state}).")
        if kind == "raw":
            return FileResponse(
                analysis.heatmap_raw.open("rb"), content_type="image/png", filename=f"analysis-{pk}-raw.png"
            )
        try:
            if kind == "region":
                return Response(HotRegionSerializer(analysis_hot_region(analysis=analysis)).data)
            png = (
                analysis_heatmap_color_png(analysis=analysis)
                if kind == "color"
                else analysis_heatmap_overlay_png(analysis=analysis, alpha=alpha)
            )
        except (FileNotFoundError, ValueError, XRayDecodeError):
            # The details (server paths) go to the log, never to the client.
            log.warning("Heat map of analysis %s cannot be drawn", pk, exc_info=True)
            raise NotFound(
                f"The heat map of analysis {pk} cannot be drawn: its stored image "
                "or heat-map file is missing or unreadable."
            ) from None
        response = HttpResponse(png, content_type="image/png")
        if kind == "overlay":
            response["Content-Disposition"] = f'inline; filename="analysis-{pk}-overlay.png"'
        return response


def _alpha(value: str | None) -> float:
    if not value:
        return OVERLAY_ALPHA
    try:
        alpha = float(value)
    except ValueError:
        alpha = -1.0
    if not 0.0 <= alpha <= 1.0:
        raise ValidationError({"alpha": "Use a number from 0 (X-ray alone) to 1 (heat map alone)."})
    return alpha


class ImageThumbnailView(APIView):
    permission_classes = [CanViewStudies]

    @extend_schema(responses={(200, "image/jpeg"): bytes}, summary="A 256 px thumbnail")
    def get(self, request: Request, pk: int) -> FileResponse:
        try:
            image = image_read(image_id=pk, reader=reader_of(request), action=Read.THUMBNAIL)
        except Image.DoesNotExist:
            raise NotFound(f"No thumbnail for image {pk}.") from None
        if not image.thumbnail:
            raise NotFound(f"No thumbnail for image {pk}.")
        kind = "image/png" if image.thumbnail.name.endswith(".png") else "image/jpeg"
        return FileResponse(image.thumbnail.open("rb"), content_type=kind)


class AnalysisRequestSerializer(serializers.Serializer):
    conditions = serializers.ListField(child=serializers.CharField(), allow_empty=False, min_length=1)
    queue = serializers.ChoiceField(choices=list(settings.ANALYSIS_QUEUES), default="interactive")
    model_id = TextField(required=False, allow_blank=True, default="")


class ImageAnalysesView(APIView):
    permission_classes = [api_requires(Capability.REVIEW)]

    @extend_schema(
        request=AnalysisRequestSerializer,
        responses={201: AnalysisSerializer(many=True)},
        summary="Run (again) chosen conditions on a stored image",
    )
    def post(self, request: Request, pk: int) -> Response:
        image = Image.objects.select_related("study__patient").filter(pk=pk).first()
        if image is None:
            raise NotFound(f"No image with id {pk}.")
        form = AnalysisRequestSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        try:
            analyses = image_analyses_request(
                image=image,
                conditions=data["conditions"],
                queue=settings.ANALYSIS_QUEUES[data["queue"]],
                model_id=data["model_id"],
                actor=request.user,
                ip_address=client_ip(request),
            )
        except UploadRejected as exc:
            raise ValidationError({"conditions": str(exc)}) from None
        return Response(AnalysisSerializer(analyses, many=True).data, status=status.HTTP_201_CREATED)


class AnnotationCreateView(generics.CreateAPIView):
    """Kept for API clients: a drawing/note, or (with analysis + verdict) one's verdict, which
    replaces one's earlier verdict on that result. The study page uses web.api.review_views."""

    permission_classes = [api_requires(Capability.REVIEW)]
    serializer_class = AnnotationSerializer

    def perform_create(self, serializer: BaseSerializer[Any]) -> None:
        data = serializer.validated_data
        try:
            if data.get("verdict"):
                annotation, _ = verdict_set(
                    analysis=data["analysis"],
                    author=self.request.user,
                    verdict=data["verdict"],
                    comment=data.get("note", ""),
                    reason=data.get("verdict_reason", ""),
                    ip_address=client_ip(self.request),
                )
            else:
                annotation = annotation_create(
                    image=data["image"],
                    author=self.request.user,
                    shapes=data.get("shapes", []),
                    note=data.get("note", ""),
                    analysis=data.get("analysis"),
                    missed_condition=data.get("missed_condition", ""),
                    ip_address=client_ip(self.request),
                )
        except ReviewRejected as exc:
            raise ValidationError({"error": str(exc)}) from None
        serializer.instance = annotation


class TokenView(ObtainAuthToken):
    """POST username + password -> the user's API token. Throttled like every login path."""

    def get_serializer_context(self) -> dict[str, Any]:
        # django-axes marks a locked-out attempt on the request it is given: give it Django's
        # own request (not DRF's wrapper), so its middleware answers 429 with the reason.
        return {**super().get_serializer_context(), "request": self.request._request}

    @extend_schema(
        responses={
            200: {"type": "object", "properties": {"token": {"type": "string"}}, "required": ["token"]},
            429: refused("Too many failed logins for this account from this address: wait, or ask an admin."),
        }
    )
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = serializer.validated_data["user"]
        token, _ = Token.objects.get_or_create(user=user)
        if token_expired(token):  # an expired token is replaced, never handed out again
            token.delete()
            token = Token.objects.create(user=user)
        # A token login is a login: the failure count starts again, last_login is kept.
        user_logged_in.send(sender=type(user), request=request._request, user=user)
        return Response({"token": token.key})

    def delete(self, request: Request) -> Response:
        """Revoke the token this request authenticated with (or the user's token)."""
        if not request.user.is_authenticated:
            return Response(
                {"error": "Log in (or send the token) to revoke it."}, status=status.HTTP_401_UNAUTHORIZED
            )
        Token.objects.filter(user=request.user).delete()
        return Response(status=status.HTTP_204_NO_CONTENT)


class RecogniseSerializer(serializers.Serializer):
    file = serializers.FileField()


class RecogniseResultSerializer(serializers.Serializer):
    filename = serializers.CharField()
    body_part = serializers.CharField(help_text="blank: not recognised")
    from_header = serializers.BooleanField()
    region = serializers.CharField()
    description = serializers.CharField()
    confidence = serializers.FloatField(allow_null=True)


class RecogniseView(APIView):
    """Before an upload: which body part the image recogniser proposes for a PNG/JPEG (or the
    DICOM header says), so the page can preselect it. Nothing is stored."""

    parser_classes = [MultiPartParser]
    serializer_class = RecogniseSerializer  # for the schema (and its checks)
    permission_classes = [api_requires(Capability.UPLOAD)]

    @extend_schema(
        request=RecogniseSerializer,
        responses={200: RecogniseResultSerializer},
        summary="Propose a body part for a file (nothing stored)",
    )
    def post(self, request: Request) -> Response:
        form = RecogniseSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        upload = form.validated_data["file"]
        if upload.size > settings.RADTRIAGE_MAX_UPLOAD_BYTES:
            return Response({"error": too_large_message(upload.size)}, status=413)
        try:
            return Response(body_part_proposal(upload.read(), upload.name or ""))
        except UploadRejected as exc:
            return Response({"error": str(exc)}, status=exc.status_code)
