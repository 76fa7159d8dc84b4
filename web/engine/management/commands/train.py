"""`manage.py train`: train, calibrate, evaluate and register one model (thin wrapper over
core.training.train.train_model). TensorFlow is imported only inside handle(). With
`--activate --reason "..."` the registered model is then switched on through the registry's
checked, audited step (web.clinical.registry.activation)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from web.clinical.registry.activation import ActivationRefused, registry_activation_reason_check
from web.clinical.registry.shared import RegistryShared, registry_refuse_local_change
from web.engine.management.commands.activate_model import activate_or_fail, command_line


class Command(BaseCommand):
    help = (
        "Train a model for a condition on a data folder (<split>/<negative|positive>/) or a "
        "manifest CSV; writes models/<model-id>/ and registers it (inactive unless "
        "--activate --reason, which checks its artifact and audits the switch). Interrupted runs "
        "continue with --resume."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--condition", default=None)
        parser.add_argument(
            "--data", default=None, help="folder laid out like ../shared/data/<condition>, or a CSV"
        )
        parser.add_argument("--architecture", default="mobilenetv2", choices=["mobilenetv2", "densenet121"])
        parser.add_argument("--model-id", default=None)
        parser.add_argument("--input-size", type=int, default=None, help="square side in px")
        parser.add_argument("--protocol", default="quick", choices=["quick", "intensive", "finetune"])
        parser.add_argument("--epochs", type=int, default=None)
        parser.add_argument("--batch-size", type=int, default=None)
        parser.add_argument("--lr", type=float, default=None)
        parser.add_argument("--warmup-epochs", type=int, default=None)
        parser.add_argument("--seed", type=int, default=42)
        parser.add_argument(
            "--patience",
            type=int,
            default=None,
            help="EarlyStopping patience in epochs (default: the protocol's)",
        )
        parser.add_argument(
            "--imagenet-weights", default=None, help="local no-top weights file (never downloaded)"
        )
        parser.add_argument("--no-augment", action="store_true")
        parser.add_argument(
            "--max-train", type=int, default=None, help="train on a stratified random subset (recorded)"
        )
        parser.add_argument("--max-val", type=int, default=None)
        parser.add_argument("--train-split", default="train")
        parser.add_argument("--calibration", default="platt", choices=["platt", "temperature"])
        parser.add_argument("--min-sensitivity", type=float, default=0.90)
        parser.add_argument(
            "--threshold-confidence",
            type=float,
            default=0.95,
            help="one-sided confidence of the exact lower bound of validation "
            "sensitivity that must reach --min-sensitivity (0: no margin)",
        )
        parser.add_argument(
            "--shortcut-augment",
            action="store_true",
            help="centre crops, blanked borders, pasted markers, gamma",
        )
        parser.add_argument(
            "--cv-folds", type=int, default=0, help="grouped cross-validation on train+val first (k folds)"
        )
        parser.add_argument("--cv-epochs", type=int, default=None)
        parser.add_argument(
            "--refinalize",
            action="store_true",
            help="re-run calibration/threshold/evaluation/card of the "
            "registered --model-id on --data with today's rules",
        )
        parser.add_argument(
            "--annotate",
            action="store_true",
            help="add the condition's population (and --inactive-reason) to "
            "the registered --model-id and re-render its card",
        )
        parser.add_argument("--inactive-reason", default=None)
        parser.add_argument(
            "--threshold-reason",
            default=None,
            help="with --annotate: why the operating point's sensitivity target is what it is (card)",
        )
        parser.add_argument(
            "--limitation",
            action="append",
            default=None,
            help="with --annotate: a limitation stated on the card (repeatable)",
        )
        parser.add_argument(
            "--remove",
            action="store_true",
            help="drop the registered (inactive) --model-id from the registry",
        )
        parser.add_argument("--threads", type=int, default=None)
        parser.add_argument(
            "--bn-images",
            type=int,
            default=2048,
            help="training images used to re-estimate BatchNorm statistics",
        )
        parser.add_argument("--cache-dir", default=str(Path(settings.BASE_DIR) / "var" / "cache"))
        parser.add_argument("--models-dir", default=None, help="default: models/ next to the registry")
        parser.add_argument("--registry", default=str(settings.RADTRIAGE_REGISTRY))
        parser.add_argument(
            "--experimental",
            default=None,
            metavar="REASON",
            help="register with status experimental and this reason",
        )
        parser.add_argument(
            "--activate",
            action="store_true",
            help="switch the model on once registered (artifact checked, audited; needs --reason)",
        )
        parser.add_argument("--reason", default=None, help="with --activate: why it goes live (audit log)")
        parser.add_argument("--resume", action="store_true")
        parser.add_argument(
            "--max-epochs-this-sitting",
            type=int,
            default=None,
            help="stop after N new epochs, resumable (budgeted CPU sittings)",
        )

    def handle(self, *args: Any, **o: Any) -> None:
        try:
            registry_refuse_local_change("manage.py train", registry=o["registry"])
        except RegistryShared as exc:
            raise CommandError(str(exc)) from None
        from core.training.config import TrainConfig
        from core.training.train import train_model

        registry = Path(o["registry"])
        confidence = o["threshold_confidence"] or None
        if o["activate"]:
            try:  # refused now, not after hours of training
                registry_activation_reason_check(reason=o["reason"])
            except ActivationRefused as exc:
                raise CommandError(str(exc)) from None
        if o["remove"]:
            from core.training.entries import remove_model

            try:
                remove_model(registry, o["model_id"])
            except (KeyError, ValueError) as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write(f"{o['model_id']}: removed from {registry}")
            return
        if o["annotate"] or o["refinalize"]:
            self._update(registry, o, confidence)
            return
        if not o["condition"] or not o["data"]:
            raise CommandError("--condition and --data are required to train")
        size = (o["input_size"], o["input_size"]) if o["input_size"] else None
        config = TrainConfig(
            condition=o["condition"],
            data=o["data"],
            architecture=o["architecture"],
            model_id=o["model_id"],
            input_size=size,
            protocol=o["protocol"],
            epochs=o["epochs"],
            batch_size=o["batch_size"],
            lr=o["lr"],
            warmup_epochs=o["warmup_epochs"],
            seed=o["seed"],
            patience=o["patience"],
            imagenet_weights=o["imagenet_weights"],
            augment=not o["no_augment"],
            max_train=o["max_train"],
            max_val=o["max_val"],
            train_split=o["train_split"],
            calibration=o["calibration"],
            min_sensitivity=o["min_sensitivity"],
            threads=o["threads"],
            bn_reestimate_images=o["bn_images"],
            cache_dir=o["cache_dir"],
            threshold_confidence=confidence,
            shortcut_augment=o["shortcut_augment"],
            cv_folds=o["cv_folds"],
            cv_epochs=o["cv_epochs"],
            status="experimental" if o["experimental"] else None,
            experimental_reason=o["experimental"],
        )
        try:
            result = train_model(
                config,
                models_dir=Path(o["models_dir"] or registry.parent / "models"),
                registry_path=registry,
                resume=o["resume"],
                command="python manage.py train " + shlex.join(sys.argv[2:]),
                log=lambda m: self.stdout.write(m),
                stop_after_epochs=o["max_epochs_this_sitting"],
            )
        except (FileNotFoundError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        if result.finished:
            self.stdout.write(self.style.SUCCESS(f"{result.model_id}: {result.artifact}"))
            if o["activate"]:
                self._activate(result.model_id, registry, o)
        else:
            self.stdout.write(
                f"{result.model_id}: {result.epochs_run} epoch(s) done; run again with --resume to continue"
                + (" (and --activate once it is finished)" if o["activate"] else "")
            )

    def _activate(self, model_id: str, registry: Path, o: dict[str, Any]) -> None:
        condition = activate_or_fail(
            model_id=model_id, reason=o["reason"], registry=registry, command=command_line()
        )
        self.stdout.write(self.style.SUCCESS(f"{model_id}: now the active {condition} model"))

    def _update(self, registry: Path, o: dict[str, Any], confidence: float | None) -> None:
        from core.registry import Registry
        from core.training.config import POPULATIONS
        from core.training.entries import annotate_model, refinalize_model

        if not o["model_id"]:
            raise CommandError("--annotate/--refinalize need --model-id")
        try:
            if o["refinalize"]:
                if not o["data"]:
                    raise CommandError("--refinalize needs --data (the model's data set)")
                refinalize_model(
                    registry,
                    o["model_id"],
                    data=o["data"],
                    cache_dir=o["cache_dir"],
                    min_sensitivity=o["min_sensitivity"],
                    threshold_confidence=confidence,
                    log=lambda m: self.stdout.write(m),
                )
            if o["annotate"]:
                entry = Registry.load(registry).entry(o["model_id"])
                fields: dict[str, Any] = {"population": POPULATIONS.get(entry.condition)}
                if o["inactive_reason"]:
                    fields["inactive_reason"] = o["inactive_reason"]
                if o["limitation"]:
                    fields["limitations"] = list(o["limitation"])
                if o["threshold_reason"]:
                    fields["threshold_reason"] = o["threshold_reason"]
                annotate_model(registry, o["model_id"], **fields)
        except (KeyError, FileNotFoundError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(f"{o['model_id']}: updated"))
        if o["activate"]:
            self._activate(o["model_id"], registry, o)
