"""The options that say which registered models a command works on and where their data is
(manage.py fit_population, model_scores)."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import CommandParser

DEFAULT_DATA = Path(settings.BASE_DIR).parent / "shared" / "data"


def models_and_data_arguments(parser: CommandParser) -> None:
    """--model ID (repeatable) or --active; --data-root, --registry and --cache-dir."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--model", action="append", default=None, metavar="ID", help="registered model id (repeatable)"
    )
    which.add_argument("--active", action="store_true", help="every active model")
    parser.add_argument(
        "--data-root",
        default=str(DEFAULT_DATA),
        help="folder holding <condition>/<split>/<negative|positive>/",
    )
    parser.add_argument("--registry", default=str(settings.RADTRIAGE_REGISTRY))
    parser.add_argument("--cache-dir", default=str(Path(settings.BASE_DIR) / "var" / "cache"))
