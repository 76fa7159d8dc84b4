"""`manage.py evaluate`: metrics with bootstrap intervals for a registered model on a labelled
folder (through the serving path), or `--table` for the paper's Table 1 layout.
TensorFlow is imported only inside handle()."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = (
        "Evaluate a registered model: --model ID or --active CONDITION, on --data DIR laid "
        "out like ../shared/data/<condition> (<split>/<negative|positive>/). --table prints "
        "the seed paper's Table 1 for the registered models."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        which = parser.add_mutually_exclusive_group()
        which.add_argument("--model", default=None, help="registered model id")
        which.add_argument(
            "--active", default=None, metavar="CONDITION", help="the active model of this condition"
        )
        parser.add_argument("--data", default=None)
        parser.add_argument("--split", default="test")
        parser.add_argument("--json", default=None, metavar="OUT", help="write the report here")
        parser.add_argument(
            "--plots", default=None, metavar="DIR", help="write roc.png, reliability.png, confusion.png here"
        )
        parser.add_argument("--n-boot", type=int, default=1000)
        parser.add_argument("--registry", default=str(settings.RADTRIAGE_REGISTRY))
        parser.add_argument("--table", action="store_true")

    def handle(self, *args: Any, **o: Any) -> None:
        from core.errors import RadTriageError
        from core.training.model_evaluation import active_table, evaluate_registered_model, table1

        if o["table"]:
            self.stdout.write(table1(o["registry"]))
            self.stdout.write("\nActive models at their operating points (test split):\n")
            self.stdout.write(active_table(o["registry"]))
            return
        if not (o["model"] or o["active"]) or not o["data"]:
            raise CommandError("give --model MODEL_ID or --active CONDITION, and --data DIR (or --table)")
        try:
            report = evaluate_registered_model(
                registry_path=o["registry"],
                data=o["data"],
                model_id=o["model"],
                condition=o["active"],
                split=o["split"],
                n_boot=o["n_boot"],
                plots_dir=o["plots"],
            )
        except (RadTriageError, RuntimeError, FileNotFoundError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        text = json.dumps(report, indent=2)
        if o["json"]:
            Path(o["json"]).parent.mkdir(parents=True, exist_ok=True)
            Path(o["json"]).write_text(text + "\n")
        warn = "  [EXPERIMENTAL]" if report["experimental"] else ""
        self.stdout.write(
            f"{report['model_id']}{warn} on {report['split']} (n={report['n']}, "
            f"threshold {report['threshold']:.4f}):"
        )
        for name in ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1"):
            lo, hi = report[f"{name}_ci95"]
            v = report[name]
            self.stdout.write(f"  {name:12s} {v if v is not None else 'n/a'}  95% CI [{lo}, {hi}]")
        self.stdout.write(f"  confusion    {report['confusion']}")
        self.stdout.write(f"  Brier skill  {report['brier_skill']}  ECE {report['ece']:.4f}")
        if not o["json"]:
            self.stdout.write(text)
