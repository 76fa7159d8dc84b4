"""manage.py registry_sync: create or update the deployment's shared registry from the image's.

docker compose runs it as each container starts, so the web process (where admins switch
models) and every worker read one registry: a file on a shared volume, or, with
MEDIA_STORAGE=s3, the document in the object store that each host copies
(web.clinical.registry.shared).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from core.errors import RegistryError
from core.registry import registry_sync
from web.clinical.registry.shared import registry_changing, registry_is_shared


class Command(BaseCommand):
    help = "Create or update RADTRIAGE_REGISTRY from the registry shipped with the code."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--from",
            dest="source",
            type=Path,
            default=Path(settings.BASE_DIR) / "registry.json",
            help="the shipped registry (default: registry.json in the code)",
        )
        parser.add_argument(
            "--to",
            dest="target",
            type=Path,
            default=Path(settings.RADTRIAGE_REGISTRY),
            help="the deployment's registry (default: RADTRIAGE_REGISTRY)",
        )

    def handle(self, *args: Any, source: Path, target: Path, **options: Any) -> None:
        if source.resolve() == target.resolve():
            self.stdout.write(f"{target} is the shipped registry itself: nothing to do.")
            return
        if registry_is_shared() and target.resolve() == Path(settings.RADTRIAGE_REGISTRY).resolve():
            # The deployment's copy first (another host's choices), then the image's new models.
            try:
                with registry_changing(target):
                    changes = registry_sync(source, target)
            except (RegistryError, OSError) as exc:
                raise CommandError(f"The shared registry could not be updated: {exc}") from None
        else:
            try:
                changes = registry_sync(source, target)
            except RegistryError as exc:
                raise CommandError(str(exc)) from None
        for change in changes:
            self.stdout.write(f"{target}: {change}")
        if not changes:
            self.stdout.write(f"{target} is up to date.")
