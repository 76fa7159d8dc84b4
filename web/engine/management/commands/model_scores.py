"""`manage.py model_scores --model ID [--model ID2 ...] | --active`: run each model through the
serving path on its condition's val and test splits and write models/<id>/scores.json
(core.training.split_scores). TensorFlow is imported only in handle()."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from web.engine.management.model_options import models_and_data_arguments


class Command(BaseCommand):
    help = (
        "Write models/<id>/scores.json: a registered model's calibrated scores and labels on its "
        "condition's validation and test splits (the reference for operating points and drift)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        models_and_data_arguments(parser)

    def handle(self, *args: Any, **o: Any) -> None:
        from core.errors import RadTriageError
        from core.registry import Registry
        from core.training.evaluation import roc_auc
        from core.training.model_ops import configure_tensorflow
        from core.training.split_scores import compute_split_scores, write_split_scores

        configure_tensorflow()
        try:
            registry = Registry.load(o["registry"])
            ids = o["model"] or [registry.active_models[c] for c in sorted(registry.active_models)]
            for model_id in ids:
                entry = registry.entry(model_id)
                document = compute_split_scores(
                    registry_path=o["registry"],
                    data=Path(o["data_root"]) / entry.condition,
                    model_id=model_id,
                    cache_dir=o["cache_dir"],
                )
                path = write_split_scores(registry, document)
                parts = ", ".join(
                    f"{split} n={len(s['labels'])} AUC {roc_auc(s['labels'], s['scores']):.4f}"
                    for split, s in document["splits"].items()
                )
                self.stdout.write(f"{model_id}: {parts} -> {path}")
        except (RadTriageError, RuntimeError, FileNotFoundError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
