"""Render a study's current report version to a PDF file.

manage.py report STUDY_ID --out FILE.pdf [--report-version N]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from web.clinical.models import Report, Study
from web.clinical.reporting.reports import report_render


class Command(BaseCommand):
    help = "Write a study's current report version (the draft, else the latest signed) as a PDF."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("study_id", type=int)
        parser.add_argument("--out", required=True, help="the PDF file to write")
        parser.add_argument(
            "--report-version",
            dest="report_version",
            type=int,
            help="a given version instead of the current one",
        )

    def handle(self, *args: Any, study_id: int, out: str, report_version: int | None, **options: Any) -> None:
        if not Study.objects.filter(pk=study_id).exists():
            raise CommandError(f"There is no study {study_id}.")
        reports = Report.objects.filter(study_id=study_id).order_by("-version")
        if report_version is not None:
            reports = reports.filter(version=report_version)
        report = reports.first()
        if report is None:
            which = f"version {report_version}" if report_version is not None else "any version"
            raise CommandError(
                f"Study {study_id} has no report ({which}): draft one on its report page first."
            )
        report = report_render(report_id=report.pk)
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        with report.pdf.open("rb") as pdf:
            path.write_bytes(pdf.read())
        state = "signed" if report.is_signed else "DRAFT (not signed)"
        self.stdout.write(f"Wrote {path} (study {study_id}, report version {report.version}, {state}).")
