"""`manage.py train_boxed`: train a box-aware head (core.training.boxed_head) so the heat map
points at the finding, evaluate it like every model and register it (inactive unless
--activate --reason: then switched on through the registry's checked, audited step). Thin
wrapper over core.training.boxed_pipeline; TensorFlow only inside handle()."""

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

SHARED = Path(settings.BASE_DIR).parent / "shared"


class Command(BaseCommand):
    help = (
        "Train a head that learns where the finding is from its boxes (train split only; val "
        "chooses the epoch), on a frozen ImageNet MobileNetV2; register it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--condition", default="fracture")
        parser.add_argument("--data-root", default=str(SHARED / "data"))
        parser.add_argument(
            "--boxes", default=None, help="boxes CSV (default: <data-root>/<condition>_boxes.csv)"
        )
        parser.add_argument(
            "--imagenet-weights",
            default=str(SHARED / "weights" / "mobilenet_v2_1.0_224_imagenet_notop.weights.h5"),
            help="local no-top MobileNetV2 weights (never downloaded)",
        )
        parser.add_argument(
            "--no-boxes", action="store_true", help="train on the image label alone (no boxes CSV)"
        )
        parser.add_argument(
            "--border",
            type=float,
            default=0.0,
            help="share of each side blanked inside the model (fights border shortcuts), e.g. 0.1",
        )
        parser.add_argument("--model-id", default=None)
        parser.add_argument("--input-size", type=int, default=384)
        parser.add_argument("--units", type=int, default=128)
        parser.add_argument("--box-weight", type=float, default=1.0)
        parser.add_argument(
            "--box-cells",
            choices=("centre", "overlap"),
            default="centre",
            help="cells a box marks: those whose centre lies in it (what the pointing game scores) "
            "or every cell it touches",
        )
        parser.add_argument("--epochs", type=int, default=30)
        parser.add_argument("--lr", type=float, default=1e-3)
        parser.add_argument("--seed", type=int, default=42)
        parser.add_argument("--registry", default=str(settings.RADTRIAGE_REGISTRY))
        parser.add_argument("--cache-dir", default=str(Path(settings.BASE_DIR) / "var" / "cache"))
        parser.add_argument(
            "--activate",
            action="store_true",
            help="switch the model on once registered (artifact checked, audited; needs --reason)",
        )
        parser.add_argument("--reason", default=None, help="with --activate: why it goes live (audit log)")

    def handle(self, *args: Any, **o: Any) -> None:
        try:
            registry_refuse_local_change("manage.py train_boxed", registry=o["registry"])
        except RegistryShared as exc:
            raise CommandError(str(exc)) from None
        from core.training.boxed_head import BoxedHeadConfig
        from core.training.boxed_pipeline import train_boxed_model
        from core.training.model_ops import configure_tensorflow

        if o["activate"]:
            try:  # refused now, not after the training
                registry_activation_reason_check(reason=o["reason"])
            except ActivationRefused as exc:
                raise CommandError(str(exc)) from None
        configure_tensorflow(seed=o["seed"])
        condition = o["condition"]
        boxes = None if o["no_boxes"] else Path(o["boxes"] or Path(o["data_root"]) / f"{condition}_boxes.csv")
        needed = [(Path(o["imagenet_weights"]), "ImageNet weights")]
        if boxes is not None:
            needed.append((boxes, "boxes CSV (or --no-boxes)"))
        for path, what in needed:
            if not path.is_file():
                raise CommandError(f"{what} not found: {path}")
        size = int(o["input_size"])
        config = BoxedHeadConfig(
            input_size=(size, size),
            units=o["units"],
            box_weight=o["box_weight"],
            box_cells=o["box_cells"],
            epochs=o["epochs"],
            lr=o["lr"],
            seed=o["seed"],
            border=o["border"],
        )
        entry = train_boxed_model(
            condition=condition,
            data_root=o["data_root"],
            boxes_csv=boxes,
            imagenet_weights=o["imagenet_weights"],
            model_id=o["model_id"] or f"{condition}-mobilenetv2-{size}-boxed-v1",
            registry_path=o["registry"],
            config=config,
            cache_dir=o["cache_dir"],
            command=shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            log=lambda line: self.stdout.write(line),
        )
        self.stdout.write(self.style.SUCCESS(f"registered {entry['id']} (status {entry['status']})"))
        if o["activate"]:
            condition = activate_or_fail(
                model_id=entry["id"], reason=o["reason"], registry=Path(o["registry"]), command=command_line()
            )
            self.stdout.write(self.style.SUCCESS(f"{entry['id']}: now the active {condition} model"))
