"""`manage.py fit_population --model ID [--model ID2 ...] | --active`: fit each model's
training population (core.population), write models/<id>/population.npz and the registry
entry's "applicability", print a table of pass rates. TensorFlow is imported only in handle()."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from web.clinical.registry.shared import RegistryShared, registry_refuse_local_change
from web.engine.management.model_options import models_and_data_arguments


class Command(BaseCommand):
    help = (
        "Fit the population check of registered models on their data set's train split "
        "(cut-off on val, pass rates reported on test, own and other populations')."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        models_and_data_arguments(parser)
        parser.add_argument("--max-train", type=int, default=3000)
        parser.add_argument("--max-other-val", type=int, default=300)
        parser.add_argument(
            "--max-other-test",
            type=int,
            default=None,
            help="a seeded random subset of each other population's test images",
        )
        parser.add_argument("--pass-rate", type=float, default=0.97)
        parser.add_argument("--margin", type=float, default=0.015)
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="report only: write neither population.npz nor the registry",
        )
        parser.add_argument("--json", default=None, metavar="OUT", help="write the reports here")

    def handle(self, *args: Any, **o: Any) -> None:
        try:
            registry_refuse_local_change("manage.py fit_population", registry=o["registry"])
        except RegistryShared as exc:
            raise CommandError(str(exc)) from None
        from core.errors import RadTriageError
        from core.registry import Registry
        from core.training.model_ops import configure_tensorflow
        from core.training.population_pipeline import fit_population_for_model, format_table

        configure_tensorflow()
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        try:
            registry = Registry.load(o["registry"])
        except RadTriageError as exc:
            raise CommandError(str(exc)) from exc
        model_ids = sorted(set(registry.active_models.values())) if o["active"] else o["model"]
        reports = []
        for model_id in model_ids:
            self.stdout.write(f"fitting population of {model_id} ...")
            try:
                reports.append(
                    fit_population_for_model(
                        model_id,
                        o["registry"],
                        o["data_root"],
                        max_train=o["max_train"],
                        max_other_val=o["max_other_val"],
                        max_other_test=o["max_other_test"],
                        pass_rate=o["pass_rate"],
                        margin=o["margin"],
                        cache_dir=o["cache_dir"],
                        write=not o["dry_run"],
                        progress=self.stdout.write,
                    )
                )
            except (RadTriageError, FileNotFoundError, ValueError) as exc:
                raise CommandError(f"{model_id}: {exc}") from exc
        self.stdout.write(format_table(reports))
        for report in reports:
            a = report["applicability"]
            if a["test_pass_rate"] < o["pass_rate"]:
                self.stderr.write(
                    f"WARNING: {report['model_id']} keeps only "
                    f"{a['test_pass_rate']:.1%} of its own test images."
                )
        if o["json"]:
            Path(o["json"]).parent.mkdir(parents=True, exist_ok=True)
            Path(o["json"]).write_text(json.dumps(reports, indent=2) + "\n")
