"""`manage.py analyze FILE [FILE ...] --condition C [--model ID] [--jsonl] [--out overlay.png]`.

All files go through one process and one model call (in batches). Each file gets its result,
always carrying `file`; a file that cannot be read, or is refused, gets `error` and
`positive: false`. Without --jsonl one file prints one JSON object (several print a list);
with --jsonl one compact JSON object per line, per file. Exit 2 only when no file at all could
be analysed. --out (the heat-map overlay) is for a single file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from core.conditions import CONDITIONS
from core.errors import RadTriageError, XRayDecodeError


class Command(BaseCommand):
    help = (
        "Analyse X-rays (DICOM, PNG or JPEG) for a condition in one model call; print JSON "
        "(--jsonl: a line per file); write the overlay of a single file with --out."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("files", type=Path, nargs="+", metavar="FILE")
        parser.add_argument("--condition", required=True, choices=sorted(CONDITIONS))
        parser.add_argument(
            "--model",
            dest="model_id",
            default=None,
            help="a registry model id (default: the condition's active model)",
        )
        parser.add_argument("--jsonl", action="store_true", help="one JSON object per line, per file")
        parser.add_argument(
            "--out", type=Path, default=None, help="overlay PNG to write (a single file only)"
        )
        parser.add_argument("--alpha", type=float, default=0.4, help="heat-map intensity 0..1 (default 0.4)")
        parser.add_argument("--registry", type=Path, default=None)
        parser.add_argument(
            "--ignore-body-part",
            action="store_true",
            help="run even if the DICOM body part does not fit the condition",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        files: list[Path] = options["files"]
        if not 0.0 <= options["alpha"] <= 1.0:
            self._fail(f"--alpha must be between 0 and 1, got {options['alpha']}.")
        if options["out"] is not None and len(files) != 1:
            self._fail("--out writes the overlay of one file; give exactly one FILE with it.")
        readable, results = self._read(files, options)
        if readable:
            self._analyse(readable, results, options)
        lines = [results[i] for i in range(len(files))]
        analysed = any("error" not in line for line in lines)
        # One file that failed, without --jsonl: the error on stderr only, as always.
        if analysed or options["jsonl"] or len(files) > 1:
            self._print(lines, jsonl=options["jsonl"])
        if not analysed:
            sys.exit(2)

    def _read(
        self, files: list[Path], options: dict[str, Any]
    ) -> tuple[dict[int, Any], dict[int, dict[str, Any]]]:
        """index -> decoded X-ray for the readable files; results holds each refusal."""
        from core.analysis import check_body_part
        from core.imaging import load_xray, validate_radiograph

        readable: dict[int, Any] = {}
        results: dict[int, dict[str, Any]] = {}
        for index, path in enumerate(files):
            try:
                size = path.stat().st_size if path.is_file() else 0
                if size > settings.RADTRIAGE_MAX_UPLOAD_BYTES:  # as an upload or a batch would
                    raise XRayDecodeError(
                        f"The file is {size:,} bytes; the largest accepted is "
                        f"{settings.RADTRIAGE_MAX_UPLOAD_BYTES:,} bytes (RADTRIAGE_MAX_UPLOAD_BYTES)."
                    )
                xray = validate_radiograph(load_xray(path, max_pixels=settings.RADTRIAGE_MAX_PIXELS))
                if not options["ignore_body_part"]:
                    check_body_part(xray, condition=options["condition"])
            except (RadTriageError, OSError) as exc:
                results[index] = self._refused(path, exc)
                continue
            readable[index] = xray
        return readable, results

    def _analyse(
        self, readable: dict[int, Any], results: dict[int, dict[str, Any]], options: dict[str, Any]
    ) -> None:
        from core.analysis import analyze_xrays
        from core.model_manager import get_manager
        from core.overlay import render_overlay, save_png

        files: list[Path] = options["files"]
        try:
            manager = get_manager(options["registry"] or settings.RADTRIAGE_REGISTRY)
            outcomes = analyze_xrays(
                list(readable.values()),
                condition=options["condition"],
                manager=manager,
                model_id=options["model_id"],
                allow_body_part_mismatch=True,
            )
        except RadTriageError as exc:  # unknown model, unreadable registry: the same for all
            for index in readable:
                results[index] = self._refused(files[index], exc)
            return
        for (index, xray), outcome in zip(readable.items(), outcomes, strict=True):
            result = {"file": str(files[index]), **outcome.to_dict()}
            if options["out"] is not None:
                save_png(options["out"], render_overlay(xray.pixels, outcome.heatmap, alpha=options["alpha"]))
                result["overlay"] = str(options["out"])
            for warning in outcome.warnings:
                self.stderr.write(f"WARNING: {files[index]}: {warning}")
            results[index] = result

    def _refused(self, path: Path, exc: Exception) -> dict[str, Any]:
        message = (
            str(exc)
            if isinstance(exc, RadTriageError)
            else (f"{path} could not be read ({getattr(exc, 'strerror', None) or exc}).")
        )
        self.stderr.write(f"error: {path}: {message}")
        return {"file": str(path), "error": message, "positive": False, "applicable": None}

    def _print(self, lines: list[dict[str, Any]], *, jsonl: bool) -> None:
        if jsonl:
            for line in lines:
                self.stdout.write(json.dumps(line))
        else:
            self.stdout.write(json.dumps(lines[0] if len(lines) == 1 else lines, indent=2))

    def _fail(self, message: str) -> None:
        self.stderr.write(f"error: {message}")
        sys.exit(2)
