"""manage.py import_batch PATH [--overnight] [--wait] [--inline] [--json] [--conditions a,b]

Imports a server folder or a .zip archive as one batch: each file accepted, recognised as a
duplicate, or refused with its reason. PNG/JPEG files take their patient from a patients.csv
beside them (file, patient_id, name, birth date, sex, accession); a file without one is filed
as unidentified (UNIDENTIFIED-<id>, "(unidentified)"), as on every other route.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from web.clinical.batches.batches import batch_import, batch_run_inline, batch_wait
from web.clinical.batches.summary import batch_summary
from web.clinical.ingest.archive_safety import ArchiveRefused, FolderFiles, ZipFiles, text_name
from web.clinical.models import Batch


class Command(BaseCommand):
    help = "Import a folder or .zip of X-rays as one batch and queue (or run) their analyses."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", help="a folder on this server, or a .zip archive")
        parser.add_argument(
            "--overnight", action="store_true", help="run the analyses in the night window (settings)"
        )
        parser.add_argument("--wait", action="store_true", help="return once every analysis has ended")
        parser.add_argument(
            "--inline", action="store_true", help="run the analyses in this process, without a worker"
        )
        parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
        parser.add_argument(
            "--conditions", default="", help="comma-separated condition codes (default: all that apply)"
        )
        parser.add_argument(
            "--timeout", type=float, default=24 * 3600, help="--wait gives up after this many seconds"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["path"])
        if options["inline"] and options["overnight"]:
            raise CommandError("--inline runs the analyses now; it cannot be combined with --overnight.")
        if not path.exists():
            raise CommandError(f"{path} does not exist.")
        conditions = [c.strip() for c in options["conditions"].split(",") if c.strip()] or None
        progress = self._progress if not options["json"] else self._progress_stderr
        try:
            files = FolderFiles(path) if path.is_dir() else ZipFiles(path)
        except ArchiveRefused as exc:
            raise CommandError(str(exc)) from None
        with files:
            batch = batch_import(
                files=files,
                source=Batch.Source.FOLDER if path.is_dir() else Batch.Source.ARCHIVE,
                source_name=text_name(str(path.resolve())),
                conditions=conditions,
                overnight=options["overnight"],
                inline=options["inline"],
            )
        if options["inline"]:
            batch_run_inline(batch=batch, on_progress=progress)
        elif options["wait"] and not batch_wait(
            batch=batch, timeout=options["timeout"], on_progress=progress
        ):
            self.stderr.write(f"Gave up waiting after {options['timeout']:.0f} s; the batch goes on.")
        batch.refresh_from_db()
        summary = batch_summary(batch)
        if options["json"]:
            self.stdout.write(json.dumps(summary))
            return
        self._print(summary)

    def _progress(self, progress: dict[str, Any]) -> None:
        self.stdout.write(
            f"  {progress['done']}/{progress['total']} analyses ended, {progress['failed']} failed"
        )

    def _progress_stderr(self, progress: dict[str, Any]) -> None:
        sys.stderr.write(
            f"  {progress['done']}/{progress['total']} analyses ended, {progress['failed']} failed\n"
        )

    def _print(self, s: dict[str, Any]) -> None:
        out = self.stdout.write
        out(f"Batch {s['batch']} ({s['state']}, {s['schedule']}): {s['files']} files")
        out(f"  accepted {s['accepted']}, duplicates {s['duplicates']}, refused {len(s['refused'])}")
        for refused in s["refused"]:
            out(f"    refused {refused['file']}: {refused['reason']}")
        froms = ", ".join(f"{n} from {k}" for k, n in sorted(s["patients_from"].items()))
        out(f"  patients: {froms or 'none'}")
        out(
            f"  analyses: {s['analyses']}, done {s['analyses_done']}, failed {s['analyses_failed']}; "
            f"positives {s['positives']}"
        )
        if s["note"]:
            out(f"  {s['note']}")
