"""manage.py restore DIR [--force]: put a backup (manage.py backup) back into this deployment's
database, media storage (MEDIA_ROOT or the S3 bucket) and model registry, after checking every
file against its manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from web.clinical.backup import BackupRefused, backup_restore


class Command(BaseCommand):
    help = "Restore a backup into an empty database and media storage (--force replaces non-empty ones)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("folder", help="a folder written by manage.py backup")
        parser.add_argument(
            "--force",
            action="store_true",
            help="replace a database and media storage that already hold data (everything in them is lost)",
        )

    def handle(self, *args: Any, folder: str, force: bool, **options: Any) -> None:
        try:
            outcome = backup_restore(folder=Path(folder), force=force, say=self.stdout.write)
        except BackupRefused as exc:
            raise CommandError(str(exc)) from None
        for note in outcome.notes:
            self.stdout.write(self.style.WARNING(f"Note: {note}"))
        counts = ", ".join(f"{n} {what}" for what, n in outcome.counts.items())
        self.stdout.write(
            self.style.SUCCESS(
                f"Restored {outcome.folder}: {counts}; {outcome.files} stored files. If this code is newer "
                "than the backup, run `manage.py migrate` next."
            )
        )
