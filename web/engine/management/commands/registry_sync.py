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
from web.clinical.registry.shared import (
    registry_is_shared,
    registry_publish,
    registry_published,
    registry_pull,
)


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
        shared = registry_is_shared() and target.resolve() == Path(settings.RADTRIAGE_REGISTRY).resolve()
        if shared and registry_pull(target, every=0):
            self.stdout.write(f"{target}: taken from the object store (the deployment's registry)")
        try:
            changes = registry_sync(source, target)
        except RegistryError as exc:
            raise CommandError(str(exc)) from None
        if shared and (changes or not registry_published()):
            registry_publish(target)
            self.stdout.write(f"{target}: published to the object store for every host")
        for change in changes:
            self.stdout.write(f"{target}: {change}")
        if not changes:
            self.stdout.write(f"{target} is up to date.")
