"""Run the DICOM Storage SCP until SIGTERM/SIGINT: `manage.py dicom_listener [--port] [--ae-title]`."""

from __future__ import annotations

import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Receive X-rays over DICOM (C-STORE, C-ECHO) and analyse them like uploads."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default=settings.RADTRIAGE_DICOM_HOST)
        parser.add_argument(
            "--port", type=int, default=settings.RADTRIAGE_DICOM_PORT, help="0: any free port"
        )
        parser.add_argument("--ae-title", default=settings.RADTRIAGE_DICOM_AE_TITLE)
        parser.add_argument(
            "--allow",
            action="append",
            default=None,
            help="a calling AE title allowed to connect (repeatable; default "
            "RADTRIAGE_DICOM_ALLOWED_AE_TITLES, empty: any)",
        )

    def handle(self, *args, host: str, port: int, ae_title: str, allow: list[str] | None, **options) -> None:
        from web.clinical.dicom.listener import StorageSCP

        if not 0 < len(ae_title) <= 16:
            raise CommandError(f"The AE title {ae_title!r} must be 1 to 16 characters.")
        allowed = allow if allow is not None else settings.RADTRIAGE_DICOM_ALLOWED_AE_TITLES
        # Addressed as RADTRIAGE_DICOM_CALLED_AE_TITLES; an --ae-title given here: as that only.
        called = (
            settings.RADTRIAGE_DICOM_CALLED_AE_TITLES if ae_title == settings.RADTRIAGE_DICOM_AE_TITLE else []
        )
        scp = StorageSCP(ae_title=ae_title, allowed_calling=allowed, called_titles=called)
        try:
            bound_host, bound_port = scp.start(host, port)
        except OSError as exc:
            raise CommandError(f"Cannot listen on {host}:{port}: {exc}") from None
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        callers = ", ".join(allowed) if allowed else "any calling AE title"
        titles = ", ".join(sorted(scp.called_titles))
        self.stdout.write(
            f"DICOM listener ready on {bound_host}:{bound_port} as {titles} (accepting {callers})",
            ending="\n",
        )
        self.stdout.flush()
        stop.wait()
        scp.stop()
        self.stdout.write("DICOM listener stopped")
