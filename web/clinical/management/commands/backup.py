"""manage.py backup DIR [--models copy|checksums]: database, stored files, model registry and
model files, and a manifest with every file's sha256 (see web/clinical/services/backup.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from web.clinical.backup import BackupRefused, backup_create


class Command(BaseCommand):
    help = (
        "Back up the database, stored files (MEDIA_ROOT or the S3 bucket) and model registry into a new "
        "or empty folder."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("folder", help="a new or empty folder")
        parser.add_argument(
            "--models",
            choices=["copy", "checksums"],
            default="copy",
            help="copy the model files the registry names (default), or record only their sha256",
        )

    def handle(self, *args: Any, folder: str, models: str, **options: Any) -> None:
        try:
            outcome = backup_create(folder=Path(folder), models=models, say=self.stdout.write)
        except BackupRefused as exc:
            raise CommandError(str(exc)) from None
        counts = ", ".join(f"{n} {what}" for what, n in outcome.counts.items())
        self.stdout.write(
            self.style.SUCCESS(
                f"Backed up into {outcome.folder}: {outcome.files} files, {outcome.bytes / 2**20:.1f} MiB "
                f"({counts}); manifest.json lists each file's sha256."
            )
        )
