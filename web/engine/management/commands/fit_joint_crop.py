"""`manage.py fit_joint_crop --model ID`: the joint template of a model trained on knee joint
crops (core.joint_crop), made from its TRAIN crops, then checked on full knee films (validation
and test films of --films); recorded as the entry's "joint_crop" (and its card). Thin wrapper
over core.training.joint_template; TensorFlow only inside handle()."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from web.clinical.registry.shared import RegistryShared, registry_refuse_local_change

DATA = Path(settings.BASE_DIR).parent / "shared" / "data"


class Command(BaseCommand):
    help = "Make a joint-crop model's template from its training crops and check it on full knee films."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--model", required=True, metavar="ID")
        parser.add_argument("--crops", default=str(DATA / "knee_osteoarthritis" / "train"))
        parser.add_argument("--films", default=str(DATA / "knee_osteoporosis"), help="<split>/<label>/*.jpg")
        parser.add_argument("--registry", default=str(settings.RADTRIAGE_REGISTRY))

    def handle(self, *args: Any, **o: Any) -> None:
        try:
            registry_refuse_local_change("manage.py fit_joint_crop", registry=o["registry"])
        except RegistryShared as exc:
            raise CommandError(str(exc)) from None
        from core.analysis import analyze_with_model_batch
        from core.errors import RadTriageError
        from core.imaging import load_xray
        from core.model_manager import ModelManager
        from core.registry import Registry
        from core.training.entries import annotate_model
        from core.training.joint_template import check_on_films, fit_template

        try:
            registry = Registry.load(o["registry"])
            entry = registry.entry(o["model"])
        except RadTriageError as exc:
            raise CommandError(str(exc)) from exc
        crops = sorted(Path(o["crops"]).glob("*/*.jpg"))
        if not crops:
            raise CommandError(f"no training crops under {o['crops']}")
        spec = fit_template(crops, registry.artifact_path(entry).parent)
        annotate_model(o["registry"], entry.id, joint_crop=spec)
        loaded = ModelManager(Path(o["registry"])).get(condition=entry.condition, model_id=entry.id)
        if loaded.joint_cropper is None:
            raise CommandError("the template was written but does not load: see the log")
        checks = {}
        for split in ("val", "test"):
            films = sorted((Path(o["films"]) / split).glob("*/*.jpg"))
            if films:
                checks[split] = check_on_films(
                    lambda paths: analyze_with_model_batch([load_xray(p) for p in paths], loaded=loaded),
                    films,
                )
                self.stdout.write(f"{split}: {checks[split]}")
        annotate_model(o["registry"], entry.id, joint_crop={**spec, "full_film_check": checks})
        self.stdout.write(self.style.SUCCESS(f"joint crop recorded for {entry.id}"))
