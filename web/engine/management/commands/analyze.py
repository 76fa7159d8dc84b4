"""`manage.py analyze FILE --condition C [--model ID] [--out overlay.png] [--alpha 0.4]`.

Prints one JSON object; a file RadTriage cannot read prints the clear error and exits 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from core.conditions import CONDITIONS
from core.errors import RadTriageError


class Command(BaseCommand):
    help = "Analyse one X-ray (DICOM, PNG or JPEG) for a condition; print JSON, write the overlay."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument("--condition", required=True, choices=sorted(CONDITIONS))
        parser.add_argument("--model", dest="model_id", default=None,
                            help="a registry model id (default: the condition's active model)")
        parser.add_argument("--out", type=Path, default=None, help="overlay PNG to write")
        parser.add_argument("--alpha", type=float, default=0.4,
                            help="heat-map intensity 0..1 (default 0.4)")
        parser.add_argument("--registry", type=Path, default=None)
        parser.add_argument("--ignore-body-part", action="store_true",
                            help="run even if the DICOM body part does not fit the condition")

    def handle(self, *args: Any, **options: Any) -> None:
        from core.analysis import analyze_xray
        from core.imaging import load_xray, validate_radiograph
        from core.model_manager import get_manager
        from core.overlay import render_overlay, save_png

        alpha = options["alpha"]
        if not 0.0 <= alpha <= 1.0:
            self._fail(f"--alpha must be between 0 and 1, got {alpha}.")
        try:
            xray = validate_radiograph(
                load_xray(options["file"], max_pixels=settings.RADTRIAGE_MAX_PIXELS)
            )
            manager = get_manager(options["registry"] or settings.RADTRIAGE_REGISTRY)
            outcome = analyze_xray(xray, condition=options["condition"], manager=manager,
                                   model_id=options["model_id"],
                                   allow_body_part_mismatch=options["ignore_body_part"])
        except RadTriageError as exc:
            self._fail(str(exc))
        result = outcome.to_dict()
        if options["out"] is not None:
            save_png(options["out"], render_overlay(xray.pixels, outcome.heatmap, alpha=alpha))
            result["overlay"] = str(options["out"])
        for warning in outcome.warnings:
            self.stderr.write(f"WARNING: {warning}")
        self.stdout.write(json.dumps(result, indent=2))

    def _fail(self, message: str) -> None:
        self.stderr.write(f"error: {message}")
        sys.exit(2)
