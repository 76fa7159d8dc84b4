from __future__ import annotations

from typing import Any

from django.conf import settings
from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.conditions import CONDITIONS, KNOWN_BODY_PARTS, normalise_body_part
from web.clinical.analysis.findings import RESULT_KIND_KEYS, RESULT_LABELS, ResultRecord
from web.clinical.models import Analysis, Annotation, Image, Patient, Study
from web.clinical.review.measure import Measurement, annotation_measurements
from web.clinical.worklist.queries import WORKLIST_REGIONS, body_part_region, worklist_strongest


class TextField(serializers.CharField):
    """Text in a JSON body: a string and nothing else. DRF's CharField turns a number into
    text ({"impression": 0} was saved as "0"); the schema says string, and so does this."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return str(super().to_internal_value(data))


PRIORITIES = {"stat": Study.Priority.STAT, "urgent": Study.Priority.URGENT, "routine": Study.Priority.ROUTINE}


class PatientSerializer(serializers.ModelSerializer):
    class Meta:
        model = Patient
        fields = ["id", "patient_id", "name", "display_name", "birth_date", "sex"]


class AnalysisSerializer(serializers.ModelSerializer):
    is_finding = serializers.BooleanField(read_only=True)
    heatmap_url = serializers.SerializerMethodField()
    heatmap_raw_url = serializers.SerializerMethodField()
    study_id = serializers.IntegerField(source="image.study_id", read_only=True)
    display_warning = serializers.SerializerMethodField()
    warnings = serializers.ListField(
        child=serializers.DictField(child=serializers.CharField()), read_only=True
    )
    image_thumbnail_url = serializers.SerializerMethodField()
    body_part_source = serializers.ChoiceField(
        choices=["header", "uploader", "recogniser", ""],
        read_only=True,
        help_text="who placed the image in the model's region: the DICOM header, the uploader's "
        "choice (followed over the image recogniser, which is then only noted), the recogniser, "
        "or nobody (blank)",
    )
    chosen_body_part = serializers.CharField(
        read_only=True, help_text="the body part the uploader chose, where the result followed it"
    )

    class Meta:
        model = Analysis
        fields = [
            "id",
            "image",
            "study_id",
            "condition",
            "state",
            "queue",
            "probability",
            "threshold",
            "positive",
            "is_finding",
            "model_id",
            "model_sha256",
            "architecture",
            "is_placeholder",
            "placeholder_reason",
            "experimental",
            "experimental_reason",
            "display_warning",
            "warnings",
            "applicable",
            "not_applicable_reason",
            "applicability",
            "body_part_source",
            "chosen_body_part",
            "heatmap_peak",
            "gradcam_method",
            "gradcam_layer",
            "notes",
            "heatmap_url",
            "heatmap_raw_url",
            "image_thumbnail_url",
            "error_message",
            "attempts",
            "requeues",
            "enqueued_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_heatmap_url(self, obj: Analysis) -> str | None:
        return reverse("api:analysis-heatmap", args=[obj.pk]) if obj.heatmap_raw else None

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_heatmap_raw_url(self, obj: Analysis) -> str | None:
        if not obj.heatmap_raw:
            return None
        return reverse("api:analysis-heatmap", args=[obj.pk]) + "?kind=raw"

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_image_thumbnail_url(self, obj: Analysis) -> str | None:
        return reverse("api:image-thumbnail", args=[obj.image_id]) if obj.image.thumbnail else None

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_display_warning(self, obj: Analysis) -> str | None:
        return obj.warnings[0]["text"] if obj.warnings else None


class ImageSerializer(serializers.ModelSerializer):
    analyses = AnalysisSerializer(many=True, read_only=True)
    thumbnail_url = serializers.SerializerMethodField()

    class Meta:
        model = Image
        fields = [
            "id",
            "study",
            "sop_instance_uid",
            "series_instance_uid",
            "format",
            "original_filename",
            "size_bytes",
            "sha256",
            "width",
            "height",
            "view_position",
            "dicom_header",
            "decode_notes",
            "recognition",
            "thumbnail_url",
            "created_at",
            "analyses",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_thumbnail_url(self, obj: Image) -> str | None:
        return reverse("api:image-thumbnail", args=[obj.pk]) if obj.thumbnail else None


class StrongestResultSerializer(serializers.Serializer):
    """The result a worklist row shows (web.clinical.analysis.findings.result_record): a finding
    when the study has one, else an applicable result; a not-applicable, experimental or
    placeholder result only when nothing applicable has finished."""

    id = serializers.IntegerField(help_text="the analysis")
    condition = serializers.CharField()
    probability = serializers.FloatField(
        allow_null=True, help_text="null for a placeholder's or a not-applicable result (meaningless)"
    )
    threshold = serializers.FloatField(allow_null=True, help_text="the model's operating threshold")
    positive = serializers.BooleanField(
        allow_null=True,
        help_text="the label at the threshold; null where it means nothing (placeholder, not applicable)",
    )
    finding = serializers.BooleanField(help_text="an AI flag: the only kind that may raise a study")
    kind = serializers.ChoiceField(choices=RESULT_KIND_KEYS)
    # A field named "label" (the metaclass takes it out of the class): mypy sees Field.label.
    label = serializers.CharField(  # type: ignore[assignment]
        help_text=f"the row's words: {'; '.join(RESULT_LABELS.values())}"
    )


class StudyListSerializer(serializers.ModelSerializer):
    patient = PatientSerializer(read_only=True)
    priority = serializers.CharField(source="get_priority_display", read_only=True)
    ai_flagged = serializers.BooleanField(read_only=True)
    image_count = serializers.IntegerField(read_only=True)
    pending_count = serializers.IntegerField(read_only=True)
    failed_count = serializers.IntegerField(read_only=True)
    assigned_radiologist = serializers.CharField(
        source="assigned_radiologist.username", default=None, read_only=True, allow_null=True
    )
    region = serializers.SerializerMethodField()
    strongest_result = serializers.SerializerMethodField()

    class Meta:
        model = Study
        fields = [
            "id",
            "study_instance_uid",
            "accession_number",
            "study_date",
            "modality",
            "body_part",
            "region",
            "description",
            "priority",
            "status",
            "assigned_radiologist",
            "claimed_at",
            "reviewed_at",
            "patient",
            "ai_flagged",
            "strongest_result",
            "image_count",
            "pending_count",
            "failed_count",
            "created_at",
        ]
        read_only_fields = fields

    @extend_schema_field(
        serializers.ChoiceField(
            choices=list(WORKLIST_REGIONS), allow_blank=True, help_text="the body region (worklist ?region=)"
        )
    )
    def get_region(self, obj: Study) -> str:
        return body_part_region(obj.body_part)

    @extend_schema_field(StrongestResultSerializer(allow_null=True))
    def get_strongest_result(self, obj: Study) -> ResultRecord | None:
        if not hasattr(obj, "strongest_result"):
            worklist_strongest([obj])
        return obj.strongest_result  # type: ignore[attr-defined]


class StudyDetailSerializer(StudyListSerializer):
    images = ImageSerializer(many=True, read_only=True)

    class Meta(StudyListSerializer.Meta):
        fields = [
            f
            for f in StudyListSerializer.Meta.fields
            if f not in ("image_count", "pending_count", "failed_count")
        ] + ["body_part_source", "images"]
        read_only_fields = fields


class UploadFieldsSerializer(serializers.Serializer):
    """The form fields of an upload. DICOM header values win over the form's."""

    conditions = serializers.CharField(
        required=False,
        default="all",
        help_text="Comma-separated condition codes, or 'all' for every condition that applies "
        f"to the body part. Known: {', '.join(CONDITIONS)}.",
    )
    priority = serializers.ChoiceField(choices=list(PRIORITIES), required=False, default="routine")
    queue = serializers.ChoiceField(
        choices=list(settings.ANALYSIS_QUEUES), required=False, default="interactive"
    )
    patient_id = serializers.CharField(required=False, allow_blank=True, max_length=64)
    patient_name = serializers.CharField(required=False, allow_blank=True, max_length=200)
    birth_date = serializers.DateField(required=False, allow_null=True)
    sex = serializers.ChoiceField(choices=Patient.Sex.choices, required=False, allow_blank=True)
    study_instance_uid = serializers.CharField(required=False, allow_blank=True, max_length=64)
    accession_number = serializers.CharField(required=False, allow_blank=True, max_length=64)
    study_date = serializers.DateField(required=False, allow_null=True)
    modality = serializers.CharField(required=False, allow_blank=True, max_length=16)
    body_part = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=64,
        help_text="One of the known DICOM body parts (e.g. CHEST, KNEE, HAND), or blank to let "
        "RadTriage recognise the region of a PNG/JPEG. DICOM headers win.",
    )
    description = serializers.CharField(required=False, allow_blank=True, max_length=200)

    def validate_conditions(self, value: str) -> list[str] | None:
        value = (value or "").strip()
        if value.lower() in ("", "all"):
            return None
        codes = [c.strip() for c in value.split(",") if c.strip()]
        unknown = [c for c in codes if c not in CONDITIONS]
        if unknown:
            raise serializers.ValidationError(
                f"Unknown condition(s) {', '.join(unknown)}; known: {', '.join(CONDITIONS)}."
            )
        return codes

    def validate_body_part(self, value: str) -> str:
        part = normalise_body_part(value)
        if part and part not in KNOWN_BODY_PARTS:
            raise serializers.ValidationError(
                f"Unknown body part '{value}'; choose one of {', '.join(KNOWN_BODY_PARTS)}, "
                "or leave it blank to let RadTriage recognise the region."
            )
        return part

    def validate_queue(self, value: str) -> str:
        return settings.ANALYSIS_QUEUES[value]


class UploadSerializer(UploadFieldsSerializer):
    """Multipart upload of one X-ray. DICOM header values win over the form's."""

    file = serializers.FileField()


class BulkUploadSerializer(UploadFieldsSerializer):
    """Multipart upload of several X-rays (repeat the `files` part). The form's fields apply to
    every file; DICOM header values win over them."""

    # An empty file is refused on its own in the results, not for the whole request.
    files = serializers.ListField(child=serializers.FileField(allow_empty_file=True), allow_empty=False)
    queue = serializers.ChoiceField(choices=list(settings.ANALYSIS_QUEUES), required=False, default="batch")

    def validate_files(self, value: list[Any]) -> list[Any]:
        limit = settings.RADTRIAGE_MAX_FILES_PER_REQUEST
        if len(value) > limit:
            raise serializers.ValidationError(
                f"{len(value)} files in one request; send at most {limit} per request."
            )
        return value


class BulkAnalysisSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    condition = serializers.CharField()
    state = serializers.CharField()


# What became of one file of a bulk upload (named in SPECTACULAR_SETTINGS: not a study's status).
BULK_UPLOAD_STATUSES = ["created", "duplicate", "rejected"]


class BulkUploadItemSerializer(serializers.Serializer):
    filename = serializers.CharField()
    status = serializers.ChoiceField(choices=BULK_UPLOAD_STATUSES)
    error = serializers.CharField(allow_blank=True)
    outcome = serializers.CharField(help_text="what the server did with this file, in a sentence")
    warnings = serializers.ListField(child=serializers.CharField())
    image_id = serializers.IntegerField(allow_null=True)
    study_id = serializers.IntegerField(allow_null=True)
    analyses = BulkAnalysisSerializer(many=True)


class BulkUploadResultSerializer(serializers.Serializer):
    created = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    rejected = serializers.IntegerField()
    results = BulkUploadItemSerializer(many=True)


class UploadResultSerializer(serializers.Serializer):
    created = serializers.BooleanField()
    warnings = serializers.ListField(child=serializers.CharField())
    outcome = serializers.CharField(help_text="what the server did with the file, in a sentence")
    study = StudyListSerializer()
    image = ImageSerializer()


class MeasurementSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["length", "angle"])
    value = serializers.FloatField()
    unit = serializers.ChoiceField(choices=["mm", "px", "deg"])
    calibrated = serializers.BooleanField(
        help_text="false: the header gives no pixel size (a length in pixels; an angle on square pixels)"
    )
    source = serializers.CharField(  # type: ignore[assignment]  # a field named like Field.source
        help_text="PixelSpacing or ImagerPixelSpacing; empty when uncalibrated"
    )
    text = serializers.CharField(help_text='e.g. "23.4 mm", "112.0 px (uncalibrated)" or "42.5°"')


class AnnotationSerializer(serializers.ModelSerializer):
    author = serializers.CharField(source="author.username", read_only=True)
    missed_condition = serializers.ChoiceField(
        choices=list(CONDITIONS), required=False, allow_blank=True, help_text="a finding the AI missed, drawn"
    )
    measurements = serializers.SerializerMethodField()

    class Meta:
        model = Annotation
        fields = [
            "id",
            "image",
            "author",
            "shapes",
            "note",
            "analysis",
            "verdict",
            "verdict_reason",
            "missed_condition",
            "measurements",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "author", "measurements", "created_at", "updated_at"]

    @extend_schema_field(MeasurementSerializer(many=True))
    def get_measurements(self, annotation: Annotation) -> list[Measurement]:
        """Each length and angle shape measured (review.measure), from the image's stored header."""
        return annotation_measurements(annotation.shapes or [], annotation.image.dicom_header)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        analysis = attrs.get("analysis")
        if attrs.get("verdict") and analysis is None:
            raise serializers.ValidationError("A verdict needs the analysis it is about.")
        if analysis is not None and analysis.image_id != attrs["image"].pk:
            raise serializers.ValidationError("The analysis belongs to another image.")
        if not isinstance(attrs.get("shapes", []), list):
            raise serializers.ValidationError({"shapes": "Shapes must be a JSON list."})
        return attrs


class AnnotationChangeSerializer(serializers.Serializer):
    """PATCH of one's own annotation: either field, or both."""

    shapes = serializers.JSONField(required=False)
    note = TextField(required=False, allow_blank=True, trim_whitespace=False)


class AnnotationCreateSerializer(AnnotationChangeSerializer):
    """A new annotation; with missed_condition, a finding the AI missed (drawn where it is)."""

    missed_condition = serializers.ChoiceField(
        choices=list(CONDITIONS), required=False, allow_blank=True, default="", help_text="the AI missed this"
    )


class VerdictInputSerializer(serializers.Serializer):
    verdict = serializers.ChoiceField(choices=Annotation.Verdict.choices)
    reason = serializers.ChoiceField(
        choices=Annotation.DisagreeReason.choices,
        required=False,
        allow_blank=True,
        default="",
        help_text="why, required with disagree",
    )
    comment = TextField(required=False, allow_blank=True, default="", max_length=2000)


class VerdictSerializer(serializers.ModelSerializer):
    author = serializers.CharField(source="author.username", read_only=True)
    comment = serializers.CharField(source="note", read_only=True)
    reason = serializers.CharField(source="verdict_reason", read_only=True)
    reason_label = serializers.CharField(source="get_verdict_reason_display", read_only=True)
    condition = serializers.CharField(source="analysis.condition", read_only=True)
    model_id = serializers.CharField(source="analysis.model_id", read_only=True)
    model_sha256 = serializers.CharField(source="analysis.model_sha256", read_only=True)

    class Meta:
        model = Annotation
        fields = [
            "id",
            "analysis",
            "author",
            "verdict",
            "reason",
            "reason_label",
            "comment",
            "condition",
            "model_id",
            "model_sha256",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class VerdictCountSerializer(serializers.Serializer):
    model_id = serializers.CharField()
    model_sha256 = serializers.CharField()
    condition = serializers.CharField()
    ai_result = serializers.ChoiceField(
        choices=RESULT_KIND_KEYS, help_text="what the AI said: the result's kind by the finding rule"
    )
    verdict = serializers.CharField(source="verdict_value")
    count = serializers.IntegerField()


class HotRegionSerializer(serializers.Serializer):
    """core.overlay.hot_region: fractions of the image's width and height."""

    level = serializers.FloatField(help_text="the outline is where the map reaches this share of its peak")
    peak = serializers.ListField(child=serializers.FloatField(), help_text="[x, y]")
    box = serializers.ListField(
        child=serializers.FloatField(), help_text="[x0, y0, x1, y1]; empty: a flat map"
    )
    contour = serializers.ListField(
        child=serializers.ListField(child=serializers.FloatField()), help_text="[[x, y], ...]"
    )


class PixelSpacingSerializer(serializers.Serializer):
    row_mm = serializers.FloatField()
    col_mm = serializers.FloatField()
    source = serializers.ChoiceField(choices=["PixelSpacing", "ImagerPixelSpacing"])  # type: ignore[assignment]


class ImageDisplaySerializer(serializers.Serializer):
    """How the study page's viewer decodes and windows the full-resolution pixels."""

    id = serializers.IntegerField()
    width = serializers.IntegerField()
    height = serializers.IntegerField()
    format = serializers.CharField()
    pixels_url = serializers.CharField()
    encoding = serializers.ChoiceField(
        choices=["rg16", "rgb8"],
        help_text="rg16: value = (R * 256 + G) * scale + offset; rgb8: the file's own 8-bit pixels",
    )
    offset = serializers.FloatField()
    scale = serializers.FloatField()
    invert = serializers.BooleanField(help_text="MONOCHROME1: invert after windowing")
    window = serializers.DictField(child=serializers.FloatField())
    range = serializers.DictField(child=serializers.FloatField())
    auto_window = serializers.DictField(child=serializers.FloatField(), required=False)
    pixel_spacing = PixelSpacingSerializer(
        allow_null=True, help_text="the length tool's calibration; null: lengths are in pixels"
    )
