"""`manage.py train_recogniser`: train the body-region recogniser on ../shared/data (thin wrapper
over core.training.recogniser.train_recogniser). Writes models/body-region-recogniser-v1/
(recogniser.npz, card.md, metrics.json); decoded thumbnails are cached under var/cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = (
        "Train the body-region recogniser (chest child/adult, knee crop/film, limb) on the "
        "manifest's train split, choose on val, report test; numpy-only at serving."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        from core.training.recogniser_data import DEFAULT_CACHE_DIR, DEFAULT_DATA_DIR, DEFAULT_OUT_DIR

        parser.add_argument(
            "--data", default=str(DEFAULT_DATA_DIR), help="folder with manifest.csv (default ../shared/data)"
        )
        parser.add_argument("--out", default=str(DEFAULT_OUT_DIR))
        parser.add_argument("--cache", default=str(DEFAULT_CACHE_DIR))
        parser.add_argument(
            "--per-class", type=int, default=3000, help="augmented training samples per class"
        )
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args: Any, **o: Any) -> None:
        from core.training.recogniser import train_recogniser

        data = Path(o["data"])
        if not (data / "manifest.csv").is_file():
            raise CommandError(f"no manifest.csv in {data}: give --data")
        report = train_recogniser(
            data,
            out_dir=Path(o["out"]),
            cache_dir=Path(o["cache"]),
            per_class=o["per_class"],
            seed=o["seed"],
            progress=self.stdout.write,
        )
        test = report["test"]
        self.stdout.write(
            f"test (n={test['n']}): population accuracy "
            f"{test['population_accuracy']:.1%}, region accuracy "
            f"{test['region_accuracy']:.1%}; card: {Path(o['out']) / 'card.md'}"
        )
