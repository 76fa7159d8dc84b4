"""A batch import and its files: the tables (re-exported by web.clinical.models)."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from web.clinical.models import Image


class Batch(models.Model):
    """One import of many files: who, when, where from, what became of each file (BatchItem),
    which analyses it asked for (Analysis.batch) and when they run."""

    class Source(models.TextChoices):
        BROWSER = "browser", "Files from the browser"
        ARCHIVE = "archive", "Archive (.zip)"
        FOLDER = "folder", "Server folder"

    class Schedule(models.TextChoices):
        NOW = "now", "Now"
        OVERNIGHT = "overnight", "In the night window"

    class State(models.TextChoices):
        WAITING = "waiting", "Waiting for the night window"
        RUNNING = "running", "Running"
        DONE = "done", "Done"

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    source = models.CharField(max_length=16, choices=Source.choices)
    source_name = models.CharField("archive or folder name", max_length=255, blank=True)
    schedule = models.CharField(max_length=16, choices=Schedule.choices, default=Schedule.NOW)
    state = models.CharField(max_length=16, choices=State.choices, default=State.RUNNING, db_index=True)
    conditions = models.JSONField("conditions asked for (null: all that apply)", null=True, blank=True)
    files_total = models.PositiveIntegerField(default=0)
    accepted = models.PositiveIntegerField(default=0)
    duplicates = models.PositiveIntegerField(default=0)
    refused = models.PositiveIntegerField(default=0)
    patients_from = models.JSONField("where patient IDs came from -> file count", default=dict, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    overran_window = models.BooleanField("went on past the night window", default=False)
    note = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "batches"

    def __str__(self) -> str:
        return f"batch #{self.pk} ({self.get_source_display()}, {self.files_total} files)"


class BatchItem(models.Model):
    """One file of a batch and what became of it."""

    class Status(models.TextChoices):
        ACCEPTED = "accepted", "Accepted"
        DUPLICATE = "duplicate", "Duplicate"
        REFUSED = "refused", "Refused"

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="items")
    position = models.PositiveIntegerField()
    filename = models.CharField(max_length=1024)
    status = models.CharField(max_length=16, choices=Status.choices)
    reason = models.TextField(blank=True)
    patient_from = models.CharField(max_length=32, blank=True)
    image = models.ForeignKey(Image, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["batch", "position"]

    def __str__(self) -> str:
        return f"{self.filename}: {self.status}"
