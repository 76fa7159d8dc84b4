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
