"""`manage.py export_feedback --since YYYY-MM-DD --user ADMIN OUT [--force]`: the radiologists'
verdicts and "AI missed" records since a date, as labelled, de-identified images in the layout
`manage.py train` reads (web.clinical.feedback). Audited as the admin named by --user."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from web.clinical.feedback.export import FeedbackExportRefused, feedback_export, feedback_since


class Command(BaseCommand):
    help = (
        "Write the feedback given since a date (verdicts, missed findings with their regions) as "
        "de-identified 8-bit PNGs with labels: OUT/<condition>/<split>/<negative|positive>/, "
        "manifest.csv, <condition>_boxes.csv and feedback.json. Train on it with "
        "`manage.py train --condition C --data OUT/C`."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("out", help="a new or empty folder (its parent must exist)")
        parser.add_argument("--since", required=True, help="feedback given or changed on or after YYYY-MM-DD")
        parser.add_argument("--user", required=True, help="the admin who runs the export (audit log)")
        parser.add_argument("--force", action="store_true", help="replace what OUT holds")

    def handle(self, *args: Any, **o: Any) -> None:
        user = get_user_model().objects.filter(username=o["user"]).first()
        if user is None:
            raise CommandError(f"There is no user {o['user']!r}: --user names the admin who runs the export.")
        try:
            since = feedback_since(o["since"])
            summary = feedback_export(since=since, out=Path(o["out"]), actor=user, force=o["force"])
        except FeedbackExportRefused as exc:
            raise CommandError(str(exc)) from None
        for condition, counts in summary["images"].items():
            boxes = summary["boxes"].get(condition, 0)
            self.stdout.write(
                f"{condition}: {counts.get('positive', 0)} positive, {counts.get('negative', 0)} negative, "
                f"{boxes} region(s)"
            )
        for condition, n in summary["conflicts"].items():
            self.stdout.write(f"{condition}: {n} image(s) left out, the radiologists' verdicts disagree")
        for why, n in {**summary["left_out"], **summary["set_aside"]}.items():
            self.stdout.write(f"left out: {n} x {why}")
        self.stdout.write(self.style.SUCCESS(f"Wrote {summary['out']} (audited as {user.get_username()})."))
