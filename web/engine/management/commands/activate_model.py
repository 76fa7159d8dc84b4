"""`manage.py activate_model MODEL_ID --reason "..."`: switch a registered model on from the
command line, through the same checked, audited step as the admin's registry page."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.errors import RadTriageError
from web.clinical.registry.activation import registry_activate


def activate_or_fail(*, model_id: str, reason: str | None, registry: Path, command: str) -> str:
    """registry_activate for a command (the audit row's actor is "system", with the OS user
    and the command line); a refusal becomes a CommandError saying why. Returns the condition."""
    try:
        return registry_activate(
            model_id=model_id, actor=None, reason=reason or "", registry_path=registry, command=command
        )
    except RadTriageError as exc:  # ActivationRefused, or the registry itself is unreadable
        raise CommandError(str(exc)) from None


def command_line() -> str:
    return "python manage.py " + shlex.join(sys.argv[1:])


class Command(BaseCommand):
    help = (
        "Make a registered model the active one of its condition: its artifact is checked "
        "(present, checksum, loads, predicts) and the switch is audited with the reason."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("model_id")
        parser.add_argument("--reason", required=True, help="why this model goes live (audit log)")
        parser.add_argument("--registry", default=str(settings.RADTRIAGE_REGISTRY))

    def handle(self, *args: Any, **o: Any) -> None:
        condition = activate_or_fail(
            model_id=o["model_id"], reason=o["reason"], registry=Path(o["registry"]), command=command_line()
        )
        self.stdout.write(
            self.style.SUCCESS(
                f"The active model for {condition} is now {o['model_id']}; new analyses use it."
            )
        )
