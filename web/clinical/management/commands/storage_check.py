"""manage.py storage_check [--create-bucket]: the media storage takes a file, gives it back
and deletes it (run at deployment, before the first upload)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from web.clinical.media_storage import media_check


class Command(BaseCommand):
    help = "Check the media storage (MEDIA_ROOT or the S3 bucket): write, read back and delete one file."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--create-bucket", action="store_true", help="with MEDIA_STORAGE=s3: create the bucket if missing"
        )

    def handle(self, *args: Any, create_bucket: bool, **options: Any) -> None:
        try:
            outcome = media_check(create_bucket=create_bucket)
        except OSError as exc:
            raise CommandError(f"The media storage does not work: {exc}") from None
        self.stdout.write(self.style.SUCCESS(outcome))
