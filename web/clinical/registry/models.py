"""A site's operating point for a model: the table (re-exported by web.clinical.models).
Its rules are in web.clinical.registry.operating_points."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class SiteOperatingPoint(models.Model):
    """The threshold this site runs one model artifact at, instead of the registry's: chosen on
    the model's validation ROC for a target sensitivity. At most one is active per condition;
    it holds only while that condition's active model is this model id with this checksum."""

    condition = models.CharField(max_length=32, db_index=True)
    model_id = models.CharField(max_length=128)
    model_sha256 = models.CharField(max_length=64)
    threshold = models.FloatField()
    registry_threshold = models.FloatField(help_text="the registry's threshold it replaces")
    target_sensitivity = models.FloatField()
    expected = models.JSONField(default=dict, help_text="the figures shown when it was confirmed")
    reason = models.TextField()
    set_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    set_at = models.DateTimeField(auto_now_add=True)
    active = models.BooleanField(default=True)
    cleared_at = models.DateTimeField(null=True, blank=True)
    cleared_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-set_at", "-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["condition"],
                condition=Q(active=True),
                name="one_active_operating_point_per_condition",
            )
        ]

    def __str__(self) -> str:
        return f"{self.model_id} at {self.threshold:.4f} (target sensitivity {self.target_sensitivity:.2f})"
