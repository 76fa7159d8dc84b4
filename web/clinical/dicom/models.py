"""A PACS send of an image's AI results: the table (re-exported by web.clinical.models)."""

from __future__ import annotations

from django.db import models

from web.clinical.models import Image


class DicomSend(models.Model):
    """The C-STORE of an image's AI results (Comprehensive SR + heat-map Secondary Captures) to
    a PACS node: queued when all its analyses are done, then sent or failed (after retries)."""

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="dicom_sends")
    host = models.CharField(max_length=255)
    port = models.PositiveIntegerField()
    ae_title = models.CharField("called AE title", max_length=16)
    state = models.CharField(max_length=8, choices=State.choices, default=State.QUEUED, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    instances = models.JSONField("SOP instance UIDs sent", default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-updated_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["image", "host", "port", "ae_title"], name="dicom_send_once_per_node"
            )
        ]

    def __str__(self) -> str:
        return f"image {self.image_id} -> {self.ae_title}@{self.host}:{self.port}: {self.state}"
