"""Report templates: the table (re-exported by web.clinical.models). Admins edit them in the
Django admin; a radiologist applies one while drafting (web.clinical.reporting.reports)."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class ReportTemplate(models.Model):
    """Standard wording for a report (often a normal study) for one body region: what it puts in
    each of the report's three fields. Only active templates are offered."""

    class Region(models.TextChoices):
        # The regions the product reads (core.applicability.REGIONS), and one for any study.
        CHEST = "chest", "Chest"
        LIMB = "limb", "Extremity (limb)"
        KNEE = "knee", "Knee"
        ANY = "", "Any region"

    name = models.CharField(max_length=100, unique=True)
    region = models.CharField("body region", max_length=8, choices=Region.choices, blank=True)
    clinical_information = models.TextField(blank=True)
    findings = models.TextField(blank=True)
    impression = models.TextField(blank=True)
    active = models.BooleanField(default=True, help_text="Offered to radiologists while drafting.")
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["region", "name"]

    def __str__(self) -> str:
        return self.name
