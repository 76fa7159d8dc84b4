"""The clinical domain's tables. The logic that changes them lives in the concept packages
(analysis, worklist, reporting, batches, dicom, audit); batches, PACS sends and report templates
keep their tables beside their logic and are re-exported here."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q

from core.wording import result_warnings
from web.clinical.worklist.sort_indexes import WORKLIST_SORT_INDEXES


class Patient(models.Model):
    class Sex(models.TextChoices):
        MALE = "M", "Male"
        FEMALE = "F", "Female"
        OTHER = "O", "Other"
        UNKNOWN = "", "Unknown"

    patient_id = models.CharField("Patient ID (MRN)", max_length=64, unique=True)
    name = models.CharField(max_length=200, blank=True)
    birth_date = models.DateField(null=True, blank=True)
    sex = models.CharField(max_length=1, choices=Sex.choices, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["patient_id"]

    def __str__(self) -> str:
        return f"{self.display_name} ({self.patient_id})"

    @property
    def display_name(self) -> str:
        # DICOM person names are 'Family^Given^Middle'.
        parts = [p for p in self.name.split("^") if p]
        if len(parts) >= 2:
            return f"{parts[1]} {parts[0]}".strip()
        return self.name or "(no name)"

    @property
    def formal_name(self) -> str:
        """'Family, Given Middle' as reports print it. DICOM PN is
        'Family^Given^Middle^Prefix^Suffix', its first '='-group alphabetic."""
        family, given, middle, prefix, suffix = ([*self.name.split("=")[0].split("^"), "", "", "", ""])[:5]
        first = " ".join(p.strip() for p in (prefix, given, middle) if p.strip())
        text = ", ".join(p for p in (family.strip(), first) if p)
        if suffix.strip() and text:
            text = f"{text}, {suffix.strip()}"
        return text or "(no name)"


# Study column -> the Patient field it copies (the worklist's sorts by the patient's fields).
STUDY_PATIENT_COPIES: dict[str, str] = {
    "patient_name": "name",
    "patient_birth_date": "birth_date",
    "patient_sex": "sex",
}


class Study(models.Model):
    class BodyPartSource(models.TextChoices):
        """Who gave the study its body part at upload."""

        HEADER = "header", "DICOM header"
        UPLOADER = "uploader", "chosen by the uploader"
        RECOGNISER = "recogniser", "image recogniser"
        NONE = "", "none"

    class Priority(models.IntegerChoices):
        STAT = 1, "STAT"
        URGENT = 2, "Urgent"
        ROUTINE = 3, "Routine"

    class Status(models.TextChoices):
        """The study's state machine (web.clinical.worklist.states): changed only there."""

        RECEIVED = "received", "Received"
        ANALYSING = "analysing", "AI analysing"
        SCHEDULED = "scheduled", "AI scheduled (night window)"
        AI_COMPLETE = "ai_complete", "AI complete"
        IN_REVIEW = "in_review", "In review"
        REVIEWED = "reviewed", "Reviewed, no report here"
        REPORTED = "reported", "Reported"

    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="studies")
    study_instance_uid = models.CharField("StudyInstanceUID", max_length=64, unique=True)
    accession_number = models.CharField(max_length=64, blank=True, db_index=True)
    study_date = models.DateField(null=True, blank=True)
    modality = models.CharField(max_length=16, blank=True)
    body_part = models.CharField("Body part (DICOM BodyPartExamined)", max_length=64, blank=True)
    # A body part chosen by a person is followed by the analyses as the header would be
    # (core.applicability.CHOSEN_BODY_PART); one the recogniser proposed is not.
    body_part_source = models.CharField(
        max_length=16, choices=BodyPartSource.choices, blank=True, default=BodyPartSource.NONE
    )
    description = models.CharField(max_length=200, blank=True)
    priority = models.PositiveSmallIntegerField(choices=Priority.choices, default=Priority.ROUTINE)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RECEIVED)
    # A real finding (succeeded, positive, not a placeholder) on any of its images. Kept by the
    # services whenever an analysis ends, so the worklist sorts on an index instead of
    # searching every analysis on each page load.
    ai_flagged = models.BooleanField("AI flag", default=False, editable=False)
    # The urgency of the strongest finding's condition (core.conditions.CONDITION_URGENCY; 0:
    # none) and its probability: kept with the flag by the same service, in the same
    # transaction, so the worklist's triage order is a sort on indexed columns.
    finding_urgency = models.PositiveSmallIntegerField(default=0, editable=False)
    finding_probability = models.FloatField(default=0.0, editable=False)
    # The conditions of its findings, ',a,b,' (analysis.findings.finding_conditions_text): the
    # worklist's "condition and positive" filter, kept with the flag.
    finding_conditions = models.CharField(max_length=200, default="", editable=False)
    # The patient's name, birth date and sex, copied onto each of its studies so the worklist's
    # sorts by them read an index of this table (web.clinical.worklist.patients keeps them).
    patient_name = models.CharField(max_length=200, blank=True, default="", editable=False)
    patient_birth_date = models.DateField(null=True, blank=True, editable=False)
    patient_sex = models.CharField(max_length=1, blank=True, default="", editable=False)
    assigned_radiologist = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="assigned_studies",
    )
    # Set by the claim/release/review services (web.clinical.worklist.claims), never by hand.
    claimed_at = models.DateTimeField(null=True, blank=True)
    reviewed_at = models.DateTimeField(null=True, blank=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["priority", "-created_at"]
        verbose_name_plural = "studies"
        indexes = [
            models.Index(fields=["priority", "-created_at"], name="study_worklist_idx"),
            # The triage order of the studies not waiting past the cap (web.clinical.worklist.queries).
            models.Index(
                fields=["priority", "-finding_urgency", "-finding_probability", "created_at", "id"],
                name="study_triage_idx",
            ),
            # The studies still to be read: few, whatever the years of reported ones.
            models.Index(
                fields=["created_at", "id"],
                name="study_waiting_idx",
                condition=~Q(status__in=["reviewed", "reported"]),
            ),
            # The flagged studies' finding conditions: the condition filter reads only this.
            models.Index(
                fields=["finding_conditions", "id"],
                name="study_finding_conditions_idx",
                condition=Q(ai_flagged=True),
            ),
            models.Index(fields=["status", "priority"], name="study_status_idx"),
            models.Index(fields=["study_date", "id"], name="study_date_idx"),
            models.Index(fields=["created_at", "id"], name="study_arrival_idx"),
            *WORKLIST_SORT_INDEXES,
        ]

    def __str__(self) -> str:
        return f"{self.accession_number or self.study_instance_uid} ({self.patient.patient_id})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        # A new study takes its patient's fields, however it is built; every later change goes
        # through web.clinical.worklist.patients.
        if self._state.adding and self.patient_id is not None:
            for column, field in STUDY_PATIENT_COPIES.items():
                setattr(self, column, getattr(self.patient, field))
        super().save(*args, **kwargs)


def image_upload_to(instance: Image, filename: str) -> str:
    return f"images/{instance.study.study_instance_uid}/{filename}"


class Image(models.Model):
    class Format(models.TextChoices):
        DICOM = "dicom", "DICOM"
        PNG = "png", "PNG"
        JPEG = "jpeg", "JPEG"

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="images")
    sop_instance_uid = models.CharField("SOPInstanceUID", max_length=64, unique=True)
    series_instance_uid = models.CharField(max_length=64, blank=True)
    file = models.FileField(upload_to=image_upload_to, max_length=255)
    original_filename = models.CharField(max_length=255, blank=True)
    format = models.CharField(max_length=8, choices=Format.choices)
    dicom_header = models.JSONField("DICOM header summary", default=dict, blank=True)
    decode_notes = models.JSONField(default=list, blank=True)
    thumbnail = models.FileField(upload_to="thumbnails/", max_length=255, blank=True)
    size_bytes = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64, unique=True)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    view_position = models.CharField(max_length=16, blank=True)
    # What the image recogniser saw at upload (core.recognition): region, population class,
    # confidence and its words. It proposes the conditions for PNG/JPEG uploads.
    recognition = models.JSONField("image recogniser's view", default=dict, blank=True)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="uploaded_images",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.format} {self.sop_instance_uid}"


class Analysis(models.Model):
    """One condition run on one image. The row is the job's state and its result."""

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="analyses")
    condition = models.CharField(max_length=32)
    requested_model_id = models.CharField(
        max_length=128, blank=True, help_text="Blank: the registry's active model."
    )
    model_id = models.CharField("model id used", max_length=128, blank=True)
    model_sha256 = models.CharField("model artifact sha256 used", max_length=64, blank=True)
    architecture = models.CharField(max_length=32, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED, db_index=True)
    queue = models.CharField(max_length=32, default="interactive")
    probability = models.FloatField(null=True, blank=True)
    threshold = models.FloatField(null=True, blank=True)
    positive = models.BooleanField("label at the model's threshold", null=True, blank=True)
    is_placeholder = models.BooleanField(default=False)
    placeholder_reason = models.TextField(blank=True)
    experimental = models.BooleanField(default=False)
    experimental_reason = models.TextField(blank=True)
    # Whether the image belongs to the model's training population (core.applicability).
    # None: not checked (not finished, or analysed before the check existed).
    applicable = models.BooleanField("in the model's population", null=True, blank=True)
    not_applicable_reason = models.TextField(blank=True)
    applicability = models.JSONField("what the applicability check saw", default=dict, blank=True)
    heatmap_peak = models.JSONField(
        "heat-map peak [x, y] (fractions of width, height)", null=True, blank=True
    )
    gradcam_method = models.CharField(max_length=32, blank=True)
    gradcam_layer = models.CharField(max_length=128, blank=True)
    notes = models.JSONField(default=list, blank=True)
    heatmap_raw = models.FileField(
        "raw Grad-CAM heat map (8-bit grayscale PNG)", upload_to="heatmaps/", max_length=255, blank=True
    )
    error_message = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    requeues = models.PositiveIntegerField(default=0)
    worker = models.CharField(max_length=200, blank=True, help_text="host:pid of the last run")
    enqueued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    # The batch import that asked for it (None: a single upload, a re-run).
    batch = models.ForeignKey(
        "Batch", null=True, blank=True, on_delete=models.SET_NULL, related_name="analyses"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        verbose_name_plural = "analyses"
        indexes = [
            models.Index(fields=["state", "enqueued_at"], name="analysis_sweep_idx"),
            # Monitoring: a model's results in a window, and its first results (its reference).
            models.Index(fields=["model_id", "model_sha256", "finished_at"], name="analysis_model_time_idx"),
            models.Index(fields=["finished_at"], name="analysis_finished_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.condition} on image {self.image_id}: {self.state}"

    @property
    def is_finding(self) -> bool:
        """A positive label a radiologist may treat as an AI flag: never a placeholder's, an
        experimental model's, or one for an image outside the model's population (the one
        rule: web.clinical.analysis.findings)."""
        from web.clinical.analysis.findings import analysis_is_finding

        return analysis_is_finding(self)

    @property
    def warnings(self) -> list[dict[str, str]]:
        """[{"kind", "text"}] to show beside the result, most serious first (core.wording)."""
        if self.state != self.State.SUCCEEDED:
            return []
        return result_warnings(
            is_placeholder=self.is_placeholder,
            placeholder_reason=self.placeholder_reason,
            applicable=self.applicable,
            not_applicable_reason=self.not_applicable_reason,
            experimental=self.experimental,
            experimental_reason=self.experimental_reason,
        )

    @property
    def is_not_applicable(self) -> bool:
        return self.state == self.State.SUCCEEDED and self.applicable is False

    @property
    def body_part_source(self) -> str:
        """Who placed the image in the model's region for this result: "header", "uploader"
        (a person's choice at upload, followed over the recogniser), "recogniser", or ""."""
        return str((self.applicability or {}).get("body_part_source") or "")

    @property
    def model_card_url(self) -> str:
        from web.clinical.registry.cards import model_card_url

        return model_card_url(self.model_id)

    @property
    def chosen_body_part(self) -> str:
        return str((self.applicability or {}).get("chosen_body_part") or "")


class Annotation(models.Model):
    class Verdict(models.TextChoices):
        AGREE = "agree", "Agree"
        DISAGREE = "disagree", "Disagree"
        UNCERTAIN = "uncertain", "Uncertain"

    class DisagreeReason(models.TextChoices):
        """Why a radiologist disagrees with an AI result: what monitoring and retraining need."""

        FALSE_POSITIVE = "false_positive", "False positive: no such finding"
        WRONG_LOCATION = "wrong_location", "Wrong location: the finding is elsewhere"
        OTHER_FINDING = "other_finding", "Another finding, not this one"
        IMAGE_QUALITY = "image_quality", "Image quality too poor to judge"

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="annotations")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="annotations")
    shapes = models.JSONField(default=list, blank=True)
    note = models.TextField(blank=True)
    analysis = models.ForeignKey(
        Analysis, null=True, blank=True, on_delete=models.SET_NULL, related_name="annotations"
    )
    verdict = models.CharField(max_length=16, choices=Verdict.choices, blank=True)
    verdict_reason = models.CharField(
        max_length=24, choices=DisagreeReason.choices, blank=True, help_text="why, for a disagreement"
    )
    # A finding the AI missed: its condition (core.conditions) and, in `shapes`, where it is.
    # Kept for monitoring (the models' misses) and as labelled examples for retraining.
    missed_condition = models.CharField(max_length=32, blank=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(verdict="") | Q(analysis__isnull=False),
                name="annotation_verdict_needs_analysis",
            ),
            # A verdict is a radiologist's current opinion of one AI result: changing it
            # updates the row, so counts per model and condition count people, not clicks.
            models.UniqueConstraint(
                fields=["analysis", "author"],
                condition=~Q(verdict=""),
                name="annotation_one_verdict_per_author",
            ),
        ]

    def __str__(self) -> str:
        kind = f"verdict {self.verdict}" if self.verdict else "annotation"
        return f"{kind} by {self.author_id} on image {self.image_id}"


def quarantine_upload_to(instance: UploadConflict, filename: str) -> str:
    return f"quarantine/{instance.sha256[:16]}/{filename}"


class UploadConflict(models.Model):
    """An upload refused because it clashes with an image already filed under another
    identity (same SOPInstanceUID or the same file for a different patient, or the same
    SOPInstanceUID with other pixels). Never merged into any study: the file is kept here,
    untouched, until someone with admin rights reviews it."""

    class Kind(models.TextChoices):
        SAME_FILE_OTHER_PATIENT = "same_file_other_patient", "Same file, another patient"
        SAME_UID_OTHER_PATIENT = "same_uid_other_patient", "Same SOPInstanceUID, another patient"
        SAME_UID_OTHER_PIXELS = "same_uid_other_pixels", "Same SOPInstanceUID, other pixels"

    kind = models.CharField(max_length=32, choices=Kind.choices)
    message = models.TextField(help_text="what the uploader was told")
    file = models.FileField(upload_to=quarantine_upload_to, max_length=255)
    original_filename = models.CharField(max_length=255, blank=True)
    sha256 = models.CharField(max_length=64)
    sop_instance_uid = models.CharField("SOPInstanceUID", max_length=64)
    claimed_patient_id = models.CharField("patient ID the upload claimed", max_length=64)
    claimed_fields = models.JSONField("identity fields of the upload", default=dict, blank=True)
    existing_image = models.ForeignKey(
        Image, null=True, blank=True, on_delete=models.SET_NULL, related_name="conflicts"
    )
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=1, help_text="times this file was sent")
    reviewed = models.BooleanField(default=False)
    review_note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["sha256", "claimed_patient_id"], name="upload_conflict_once_per_file_and_patient"
            ),
        ]

    def __str__(self) -> str:
        return f"conflict #{self.pk}: {self.get_kind_display()}"


def report_upload_to(instance: Report, filename: str) -> str:
    return f"reports/study-{instance.study_id}/{filename}"


class Report(models.Model):
    """One version of a study's report. A draft is edited freely; signing freezes it (text,
    signer, time and the rendered PDF); any later change is an addendum: a new version that
    keeps the signed ones untouched."""

    class State(models.TextChoices):
        DRAFT = "draft", "Draft"
        SIGNED = "signed", "Signed"

    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="reports")
    version = models.PositiveIntegerField()
    is_addendum = models.BooleanField(default=False)
    # The report's text, in three fields: each printed under its heading.
    clinical_information = models.TextField(blank=True)
    findings = models.TextField(blank=True)
    impression = models.TextField(blank=True)
    # The report template last applied to this version (its name as it was then), if any.
    template_name = models.CharField(max_length=100, blank=True)
    state = models.CharField(max_length=8, choices=State.choices, default=State.DRAFT)
    # Only the author edits a draft and signs it (web.clinical.reporting.reports).
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    # The draft's first author when a colleague took the study over with its draft (audited
    # "study.take_over", both names): the record shows whose words it began as.
    taken_over_from = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    signed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    signed_at = models.DateTimeField(null=True, blank=True)

    class ToldHow(models.TextChoices):
        PHONE = "phone", "by phone"
        IN_PERSON = "in_person", "in person"
        SECURE_MESSAGE = "secure_message", "by secure message"
        PAGE = "page", "by page"

    # A critical result and its communication: what, to whom, how, when, and whether they
    # acknowledged it (read it back). A version with a critical result is signed only once
    # the communication is recorded (web.clinical.reporting.reports).
    critical_finding = models.TextField(blank=True)
    critical_told_to = models.CharField(max_length=200, blank=True)
    critical_told_how = models.CharField(max_length=16, choices=ToldHow.choices, blank=True)
    critical_told_at = models.DateTimeField(null=True, blank=True)
    critical_acknowledged = models.BooleanField(default=False)
    # The PDF of this version's current text; rendered by a worker (maintenance queue).
    pdf = models.FileField(upload_to=report_upload_to, max_length=255, blank=True)
    pdf_sha256 = models.CharField(max_length=64, blank=True)
    rendered_text_hash = models.CharField(max_length=64, blank=True, help_text="what the PDF shows")
    render_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["study", "version"]
        constraints = [
            models.UniqueConstraint(fields=["study", "version"], name="report_version_unique"),
            # At most one draft per study: the one being edited.
            models.UniqueConstraint(
                fields=["study"], condition=Q(state="draft"), name="report_one_draft_per_study"
            ),
        ]

    def __str__(self) -> str:
        return f"Report v{self.version} of study {self.study_id} ({self.state})"

    @property
    def is_signed(self) -> bool:
        return self.state == self.State.SIGNED

    # What signing freezes; only the rendering bookkeeping may still change.
    FROZEN_WHEN_SIGNED = (
        "clinical_information",
        "findings",
        "impression",
        "template_name",
        "critical_finding",
        "critical_told_to",
        "critical_told_how",
        "critical_told_at",
        "critical_acknowledged",
        "state",
        "author_id",
        "taken_over_from_id",
        "signed_by_id",
        "signed_at",
        "version",
        "is_addendum",
        "study_id",
    )

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None:
            stored = Report.objects.filter(pk=self.pk).values(*self.FROZEN_WHEN_SIGNED).first()
            if stored and stored["state"] == self.State.SIGNED:
                changed = [f for f in self.FROZEN_WHEN_SIGNED if stored[f] != getattr(self, f)]
                if changed:
                    raise SignedReportChanged(
                        f"Report version {self.version} is signed and cannot change ({', '.join(changed)})."
                    )
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        if self.is_signed:
            raise SignedReportChanged(f"Report version {self.version} is signed and cannot be deleted.")
        return super().delete(*args, **kwargs)


class SignedReportChanged(Exception):
    """A signed report version was about to change: never allowed (write an addendum)."""


# Tables kept beside their logic; imported last, as they refer to the ones above.
from web.clinical.audit.models import AuditEvent, AuditLogIsAppendOnly  # noqa: E402
from web.clinical.batches.models import Batch, BatchItem  # noqa: E402
from web.clinical.dicom.models import DicomSend  # noqa: E402
from web.clinical.monitoring.models import (  # noqa: E402
    CountedDay,
    DriftAlert,
    ModelDay,
    ModelReference,
    ResultChange,
)
from web.clinical.registry.models import SiteOperatingPoint  # noqa: E402
from web.clinical.reporting.models import ReportTemplate  # noqa: E402

__all__ = [
    "Analysis",
    "Annotation",
    "AuditEvent",
    "AuditLogIsAppendOnly",
    "Batch",
    "BatchItem",
    "CountedDay",
    "DicomSend",
    "DriftAlert",
    "Image",
    "ModelDay",
    "ModelReference",
    "Patient",
    "Report",
    "ReportTemplate",
    "ResultChange",
    "SignedReportChanged",
    "SiteOperatingPoint",
    "Study",
    "UploadConflict",
]
