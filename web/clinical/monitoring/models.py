"""Monitoring's tables (re-exported by web.clinical.models): the department's own reference
of each model (id and checksum), frozen once its first weeks are over, and drift alerts."""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class ModelReference(models.Model):
    """A model's score distribution in the department's first RADTRIAGE_MONITORING_REFERENCE_DAYS
    of results (that id and checksum), saved once that period is over and holds enough results:
    it never changes after, so it is computed once, not on every page."""

    model_id = models.CharField(max_length=128)
    model_sha256 = models.CharField(max_length=64, blank=True)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    n = models.PositiveIntegerField(help_text="scored results (finding, negative, experimental)")
    flagged = models.PositiveIntegerField(help_text="of them positive at the model's threshold")
    cuts = models.JSONField(help_text="the 9 decile cut points of the scores")
    fractions = models.JSONField(help_text="the share of the scores in each of the 10 bins")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["model_id", "model_sha256"], name="model_reference_once"),
        ]

    def __str__(self) -> str:
        return f"reference of {self.model_id} ({self.model_sha256[:12]})"


class DriftAlert(models.Model):
    """A model's results left what its reference expects (flag rate outside its band, or the
    score distribution shifted). Raised once per model (id, checksum) and reason, audited;
    cleared when it no longer holds, when the model or its reference changes."""

    class Reason(models.TextChoices):
        FLAG_RATE = "flag_rate", "flag rate outside its expected band"
        PSI = "psi", "score distribution shifted (PSI)"

    model_id = models.CharField(max_length=128)
    model_sha256 = models.CharField(max_length=64, blank=True)
    condition = models.CharField(max_length=32)
    reason = models.CharField(max_length=16, choices=Reason.choices)
    reference = models.CharField(max_length=64, help_text="which reference it was judged against")
    detail = models.JSONField(default=dict, blank=True)
    raised_at = models.DateTimeField(auto_now_add=True)
    cleared_at = models.DateTimeField(null=True, blank=True)
    cleared_why = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-raised_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["model_id", "model_sha256", "reason"],
                condition=Q(cleared_at__isnull=True),
                name="drift_alert_one_open_per_model_reason",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model_id}: {self.get_reason_display()}"


class ModelDay(models.Model):
    """One model's results of one past day (local time), counted once (monitoring.days): the
    window's numbers add these up instead of counting a year of rows on every request. A day is
    counted again whenever a result of it changes (ResultChange)."""

    model_id = models.CharField(max_length=128)
    model_sha256 = models.CharField(max_length=64, blank=True)
    condition = models.CharField(max_length=32)
    day = models.DateField()
    analysed = models.PositiveIntegerField(default=0)
    finding = models.PositiveIntegerField(default=0)
    negative = models.PositiveIntegerField(default=0)
    not_applicable = models.PositiveIntegerField(default=0)
    experimental = models.PositiveIntegerField(default=0)
    placeholder = models.PositiveIntegerField(default=0)
    scored = models.PositiveIntegerField(default=0)
    flagged = models.PositiveIntegerField(default=0)
    # Radiologists' current verdicts on the day's findings, and on its negatives.
    agree = models.PositiveIntegerField(default=0)
    disagree = models.PositiveIntegerField(default=0)
    uncertain = models.PositiveIntegerField(default=0)
    negative_agree = models.PositiveIntegerField(default=0)
    negative_disagree = models.PositiveIntegerField(default=0)
    negative_uncertain = models.PositiveIntegerField(default=0)
    missed = models.JSONField(
        default=list,
        blank=True,
        help_text="AI-missed records of its condition on images it read that day (ids)",
    )
    threshold = models.FloatField(null=True, blank=True, help_text="the day's highest threshold")
    last_result = models.DateTimeField(null=True, blank=True)
    last_clinical = models.DateTimeField(null=True, blank=True)
    cuts = models.JSONField(default=list, blank=True, help_text="the reference's cuts the histogram uses")
    histogram = models.JSONField(default=list, blank=True, help_text="scored results per bin of `cuts`")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["day", "model_id", "model_sha256", "condition"], name="model_day_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model_id} ({self.model_sha256[:12]}) on {self.day}"


class CountedDay(models.Model):
    """A past day whose ModelDay rows are written (a day without results has none)."""

    day = models.DateField(unique=True)
    counted_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return str(self.day)


class ResultChange(models.Model):
    """Finished results written, changed or deleted, verdicts on them or AI-missed records on
    their images given, changed or withdrawn, between `lo` and `hi` (the results' finished_at):
    written by the database itself, in the writing transaction (triggers on the analysis and
    annotation tables, migration 0020_model_days), whoever writes (the job, a radiologist, the admin, a
    cascade). Its days are counted again."""

    lo = models.DateTimeField()
    hi = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["lo"], name="result_change_lo_idx")]

    def __str__(self) -> str:
        return f"{self.lo} - {self.hi}"
