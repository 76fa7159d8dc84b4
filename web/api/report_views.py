"""Study reports over the API: list (drafts for radiologists only), draft (the study's holder),
sign (the draft's author), download the PDF; the report templates offered while drafting. A
refusal answers {"error": why}: 409 when the holder, the author or the report's state does not
allow it, naming who."""

from __future__ import annotations

from typing import Any

from django.http import FileResponse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from web.access import Capability, api_requires, can, client_ip
from web.api.schema import refused
from web.api.serializers import TextField
from web.clinical.audit.reads import Read, reader_of, study_read
from web.clinical.models import Report, ReportTemplate, Study
from web.clinical.reporting.report_templates import report_templates_offered, study_template_region
from web.clinical.reporting.reports import (
    MAX_IMPRESSION_CHARS,
    CriticalCommunication,
    report_draft_save,
    report_pdf_for_download,
    report_pdf_is_current,
    report_sign,
    reports_visible,
)
from web.clinical.worklist.states import StudyActionRefused


class ReportSerializer(serializers.ModelSerializer):
    author = serializers.CharField(source="author.get_username", read_only=True)
    taken_over_from = serializers.SerializerMethodField(
        help_text="The draft's first author, when a colleague took the study over with it."
    )
    signed_by = serializers.SerializerMethodField()
    pdf_ready = serializers.SerializerMethodField()
    pdf_url = serializers.SerializerMethodField()

    class Meta:
        model = Report
        fields = [
            "id",
            "study",
            "version",
            "is_addendum",
            "state",
            "clinical_information",
            "findings",
            "impression",
            "template_name",
            "critical_finding",
            "critical_told_to",
            "critical_told_how",
            "critical_told_at",
            "critical_acknowledged",
            "author",
            "taken_over_from",
            "signed_by",
            "signed_at",
            "pdf_ready",
            "pdf_sha256",
            "pdf_url",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_taken_over_from(self, report: Report) -> str:
        return report.taken_over_from.get_username() if report.taken_over_from else ""

    def get_signed_by(self, report: Report) -> str:
        return report.signed_by.get_username() if report.signed_by else ""

    def get_pdf_ready(self, report: Report) -> bool:
        return report_pdf_is_current(report)

    def get_pdf_url(self, report: Report) -> str:
        return f"/api/reports/{report.pk}/pdf/"


def _report_text(**kwargs: Any) -> TextField:
    return TextField(allow_blank=True, max_length=MAX_IMPRESSION_CHARS, trim_whitespace=False, **kwargs)


class DraftSerializer(serializers.Serializer):
    impression = _report_text()
    # Left out, the draft's stay as they were.
    clinical_information = _report_text(required=False)
    findings = _report_text(required=False)
    template = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        help_text="An active report template: its text fills the fields left empty.",
    )
    template_replace = serializers.BooleanField(
        required=False,
        default=False,
        help_text="The template's text replaces what the fields hold (the radiologist confirmed it).",
    )
    # A critical result and its communication; left out, the draft's stay as they were.
    critical_finding = TextField(required=False, allow_blank=True, max_length=2000)
    critical_told_to = TextField(required=False, allow_blank=True, max_length=200)
    critical_told_how = serializers.ChoiceField(
        choices=Report.ToldHow.choices, required=False, allow_blank=True
    )
    critical_told_at = serializers.DateTimeField(required=False, allow_null=True)
    critical_acknowledged = serializers.BooleanField(required=False)


CRITICAL_FIELDS = (
    "critical_finding",
    "critical_told_to",
    "critical_told_how",
    "critical_told_at",
    "critical_acknowledged",
)


def _critical(data: dict[str, Any]) -> CriticalCommunication | None:
    if not any(name in data for name in CRITICAL_FIELDS):
        return None
    return CriticalCommunication(
        finding=data.get("critical_finding", ""),
        told_to=data.get("critical_told_to", ""),
        told_how=data.get("critical_told_how", ""),
        told_at=data.get("critical_told_at"),
        acknowledged=data.get("critical_acknowledged", False),
    )


def _study(pk: int) -> Study:
    try:
        return Study.objects.select_related("patient").get(pk=pk)
    except Study.DoesNotExist:
        raise NotFound("No such study.") from None


def _report(pk: int) -> Report:
    try:
        related = ("study__patient", "author", "signed_by", "taken_over_from")
        return Report.objects.select_related(*related).get(pk=pk)
    except Report.DoesNotExist:
        raise NotFound("No such report.") from None


class StudyReportsView(APIView):
    """GET: the study's report versions, oldest first (drafts only for radiologists: anyone
    else sees the signed ones). POST: save my draft (a new version, an addendum once one is
    signed); 409 naming the colleague who holds the study or wrote the draft."""

    def get_permissions(self) -> list[Any]:
        needed = Capability.REVIEW if self.request.method == "POST" else Capability.VIEW_STUDIES
        return [api_requires(needed)()]

    @extend_schema(responses={200: ReportSerializer(many=True)}, summary="The study's report versions")
    def get(self, request: Request, pk: int) -> Response:
        try:
            study = study_read(study_id=pk, reader=reader_of(request), action=Read.REPORTS)
        except Study.DoesNotExist:
            raise NotFound("No such study.") from None
        reports = reports_visible(study=study, user=request.user)
        return Response(ReportSerializer(reports, many=True).data)

    @extend_schema(
        request=DraftSerializer,
        responses={200: ReportSerializer, 409: refused("A colleague holds the study or wrote the draft.")},
        summary="Save the draft",
    )
    def post(self, request: Request, pk: int) -> Response:
        _study(pk)
        form = DraftSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        try:
            report = report_draft_save(
                study_id=pk,
                author=request.user,
                impression=form.validated_data["impression"],
                clinical_information=form.validated_data.get("clinical_information"),
                findings=form.validated_data.get("findings"),
                critical=_critical(form.validated_data),
                template_id=form.validated_data.get("template"),
                template_replace=form.validated_data["template_replace"],
                ip_address=client_ip(request),
            )
        except StudyActionRefused as exc:
            return Response({"error": str(exc)}, status=exc.status_code)
        return Response(ReportSerializer(report).data, status=status.HTTP_200_OK)


class ReportSignView(APIView):
    """Sign my draft: final; the study becomes reported. 409 unless I wrote the draft."""

    permission_classes = [api_requires(Capability.REVIEW)]

    @extend_schema(
        request=None,
        responses={200: ReportSerializer, 409: refused("Not my draft, or already signed.")},
        summary="Sign a draft (final)",
    )
    def post(self, request: Request, pk: int) -> Response:
        _report(pk)
        try:
            report = report_sign(report_id=pk, signer=request.user, ip_address=client_ip(request))
        except StudyActionRefused as exc:
            return Response({"error": str(exc)}, status=exc.status_code)
        return Response(ReportSerializer(report).data)


class ReportPdfView(APIView):
    permission_classes = [api_requires(Capability.VIEW_STUDIES)]

    @extend_schema(responses={(200, "application/pdf"): bytes}, summary="The version's PDF")
    def get(self, request: Request, pk: int) -> FileResponse:
        report = _report(pk)
        if not report.is_signed and not can(request.user, Capability.REVIEW):
            raise NotFound("No such report.")  # drafts are the radiologists' working copy
        report = report_pdf_for_download(report_id=pk, actor=request.user, ip_address=client_ip(request))
        study = report.study
        name = f"report-{study.accession_number or study.pk}-v{report.version}.pdf"
        return FileResponse(report.pdf.open("rb"), content_type="application/pdf", filename=name)


class ReportTemplateSerializer(serializers.ModelSerializer):
    for_this_region = serializers.SerializerMethodField(help_text="For the body region of ?study.")

    class Meta:
        model = ReportTemplate
        fields = ["id", "name", "region", "clinical_information", "findings", "impression", "for_this_region"]
        read_only_fields = fields

    def get_for_this_region(self, template: ReportTemplate) -> bool:
        region = self.context.get("region", "")
        return bool(region) and template.region == region


class TemplateQuerySerializer(serializers.Serializer):
    study = serializers.IntegerField(required=False, min_value=1)


class ReportTemplatesView(APIView):
    """GET: the active report templates (admins edit them in the admin); with ?study=<id>, those
    for that study's body region first."""

    permission_classes = [api_requires(Capability.REVIEW)]

    @extend_schema(
        parameters=[TemplateQuerySerializer],
        responses={200: ReportTemplateSerializer(many=True)},
        summary="The report templates offered while drafting",
    )
    def get(self, request: Request) -> Response:
        form = TemplateQuerySerializer(data=request.query_params)
        form.is_valid(raise_exception=True)
        study = _study(form.validated_data["study"]) if "study" in form.validated_data else None
        templates = report_templates_offered(study=study)
        context = {"region": study_template_region(study)}
        return Response(ReportTemplateSerializer(templates, many=True, context=context).data)
