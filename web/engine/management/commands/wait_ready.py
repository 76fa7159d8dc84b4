"""Say "ready" when RadTriage is: the web answers /healthz/ and every worker pool process has
its models warm. Run by `make run` (Procfile); it then stays idle, because honcho stops the
whole stack when one of its processes ends (--once: exit after saying it, for scripts).

    manage.py wait_ready [--url http://127.0.0.1:8000/] [--processes N] [--timeout S] [--once]
"""

from __future__ import annotations

import time
import urllib.request
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from web.engine.readiness import warm_processes_since


class Command(BaseCommand):
    help = "Wait until the web answers and the workers' models are warm, then say ready."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", default="", help="the web's base URL (blank: don't check it)")
        parser.add_argument("--processes", type=int, default=1, help="worker pool processes to wait for")
        parser.add_argument("--timeout", type=float, default=600.0)
        parser.add_argument("--once", action="store_true", help="exit after saying ready")

    def handle(
        self, *args: Any, url: str, processes: int, timeout: float, once: bool, **options: Any
    ) -> None:
        started = time.time()
        deadline = time.monotonic() + timeout
        while not (self._web_up(url) and warm_processes_since(started) >= processes):
            if time.monotonic() > deadline:
                raise CommandError(
                    f"Not ready after {timeout:.0f} s: the web or {processes} warm worker process(es) "
                    "are missing; see the worker's log."
                )
            time.sleep(0.5)
        where = f" at {url}" if url else ""
        self.stdout.write(f"RadTriage is ready{where}: models warm in {time.time() - started:.0f} s.")
        self.stdout.flush()
        while not once:
            time.sleep(3600)

    @staticmethod
    def _web_up(url: str) -> bool:
        if not url:
            return True
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/healthz/", timeout=2) as response:
                return response.status in (200, 503)  # 503: answering, with a degraded part
        except OSError as exc:
            return getattr(exc, "code", None) == 503
