"""registry.json: the catalogue of models and the active model per condition.

The file is the single source of truth the ModelManager reads. `validate_registry` reports every
mistake at once, each with where it is; `Registry.save` writes atomically (temp file + rename)
so a crash mid-write never leaves a half-written registry.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.architectures import ARCHITECTURES
from core.conditions import CONDITIONS
from core.errors import RegistryError

SCHEMA_VERSION = 1
STATUSES = ("validated", "experimental", "retired")
CALIBRATION_METHODS = ("none", "temperature", "platt")

REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "condition": str,
    "architecture": str,
    "input_size": list,
    "class_labels": list,
    "threshold": (int, float),
    "artifact": str,
}


@dataclass(frozen=True)
class ModelEntry:
    """One registered model. `raw` keeps every field, including ones this code does not know."""

    raw: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.raw["id"])

    @property
    def condition(self) -> str:
        return str(self.raw["condition"])

    @property
    def architecture(self) -> str:
        return str(self.raw["architecture"])

    @property
    def input_size(self) -> tuple[int, int]:
        h, w = self.raw["input_size"]
        return int(h), int(w)

    @property
    def threshold(self) -> float:
        return float(self.raw["threshold"])

    @property
    def artifact(self) -> str:
        return str(self.raw["artifact"])

    @property
    def sha256(self) -> str | None:
        return self.raw.get("sha256")

    @property
    def gradcam_layer(self) -> str | None:
        return self.raw.get("gradcam_layer")

    @property
    def calibration(self) -> dict[str, Any]:
        return self.raw.get("calibration") or {"method": "none"}

    @property
    def status(self) -> str:
        return str(self.raw.get("status", "validated"))

    @property
    def is_experimental(self) -> bool:
        return self.status == "experimental"

    @property
    def experimental_reason(self) -> str | None:
        if not self.is_experimental:
            return None
        return self.raw.get("experimental_reason") or ("Experimental model: not validated for clinical use.")


@dataclass
class Registry:
    path: Path
    models: dict[str, ModelEntry] = field(default_factory=dict)
    active_models: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ reading
    @classmethod
    def load(cls, path: str | Path) -> Registry:
        path = Path(path)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RegistryError(f"Model registry not found: {path}") from None
        except json.JSONDecodeError as exc:
            raise RegistryError(
                f"Model registry {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})."
            ) from None
        except UnicodeDecodeError as exc:
            raise RegistryError(
                f"Model registry {path} is not UTF-8 text (byte {exc.start}): is it the right file?"
            ) from None
        except RecursionError:
            raise RegistryError(f"Model registry {path} is nested too deeply to be a registry.") from None
        except OSError as exc:  # a folder, no permission, an I/O error
            raise RegistryError(f"Model registry {path} cannot be read ({exc.strerror or exc}).") from None
        problems = validate_registry(document)
        if problems:
            raise RegistryError(
                f"Model registry {path} has {len(problems)} problem(s):\n- " + "\n- ".join(problems)
            )
        return cls.from_document(document, path=path)

    @classmethod
    def from_document(cls, document: dict[str, Any], *, path: Path) -> Registry:
        models = {m["id"]: ModelEntry(dict(m)) for m in document.get("models", [])}
        extra = {k: v for k, v in document.items() if k not in {"models", "active_models"}}
        return cls(
            path=path, models=models, active_models=dict(document.get("active_models", {})), extra=extra
        )

    def entry(self, model_id: str) -> ModelEntry:
        try:
            return self.models[model_id]
        except KeyError:
            raise RegistryError(
                f"Model '{model_id}' is not in the registry {self.path}. Registered: "
                f"{', '.join(sorted(self.models)) or 'none'}."
            ) from None

    def active_entry(self, condition: str) -> ModelEntry | None:
        model_id = self.active_models.get(condition)
        return self.models.get(model_id) if model_id else None

    def artifact_path(self, entry: ModelEntry) -> Path:
        """Artifact paths in the registry are relative to the registry file's folder."""
        p = Path(entry.artifact)
        return p if p.is_absolute() else (self.path.parent / p)

    # ------------------------------------------------------------------ writing
    def to_document(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            **{k: v for k, v in self.extra.items() if k != "schema_version"},
            "active_models": dict(sorted(self.active_models.items())),
            "models": [self.models[k].raw for k in sorted(self.models)],
        }

    def register(self, raw: dict[str, Any]) -> ModelEntry:
        """Add or replace an entry; which model is active does not change."""
        entry = ModelEntry(dict(raw))
        self.models[entry.id] = entry
        return entry

    def set_active(self, model_id: str) -> None:
        """The low-level write behind an activation: no artifact check, no reason, no audit.
        Switching a model on goes through web.clinical.registry.activation.registry_activate
        (the admin page and the manage.py commands call it); tests/test_activation_owner.py
        keeps every other caller out."""
        entry = self.entry(model_id)
        self.active_models[entry.condition] = entry.id

    def save(self) -> None:
        document = self.to_document()
        problems = validate_registry(document)
        if problems:
            raise RegistryError("Refusing to write an invalid registry:\n- " + "\n- ".join(problems))
        write_json_atomic(self.path, document)


def write_json_atomic(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp makes the file 0600: the replaced registry would then be unreadable to the other
    # services' users (the compose workers run as another user). Keep the old file's mode, else 0644.
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    os.chmod(tmp, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2, sort_keys=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------- validation


def validate_registry(document: Any) -> list[str]:
    """Every problem in a registry document, each a sentence saying where and what."""
    if not isinstance(document, dict):
        return ["The registry must be a JSON object with 'models' and 'active_models'."]
    problems: list[str] = []
    models = document.get("models")
    if not isinstance(models, list):
        problems.append("'models' must be a list of model entries.")
        models = []
    active = document.get("active_models", {})
    if not isinstance(active, dict):
        problems.append("'active_models' must map a condition code to a model id.")
        active = {}
    seen: dict[str, dict[str, Any]] = {}
    for index, model in enumerate(models):
        problems.extend(_validate_entry(model, index))
        if isinstance(model, dict) and isinstance(model.get("id"), str):
            if model["id"] in seen:
                problems.append(f"models[{index}]: duplicate id '{model['id']}'.")
            seen[model["id"]] = model
    for condition, model_id in active.items():
        if not isinstance(model_id, str):
            problems.append(f"active_models.{condition}: must be a model id (a string).")
        elif condition not in CONDITIONS:
            problems.append(f"active_models: unknown condition '{condition}'.")
        elif model_id not in seen:
            problems.append(f"active_models.{condition}: model '{model_id}' is not in 'models'.")
        elif seen[model_id].get("condition") != condition:
            problems.append(
                f"active_models.{condition}: model '{model_id}' is for condition "
                f"'{seen[model_id].get('condition')}', not '{condition}'."
            )
    return problems


def _validate_entry(model: Any, index: int) -> list[str]:
    if not isinstance(model, dict):
        return [f"models[{index}] must be an object."]
    where = f"models[{index}] ('{model.get('id', '?')}')"
    problems = []
    for name, kind in REQUIRED_FIELDS.items():
        if name not in model:
            problems.append(f"{where}: missing required field '{name}'.")
        elif not isinstance(model[name], kind) or isinstance(model[name], bool):
            problems.append(f"{where}: field '{name}' has the wrong type.")
    if problems:
        return problems
    if model["condition"] not in CONDITIONS:
        problems.append(
            f"{where}: unknown condition '{model['condition']}' (known: {', '.join(CONDITIONS)})."
        )
    if model["architecture"] not in ARCHITECTURES:
        problems.append(
            f"{where}: unknown architecture '{model['architecture']}' (known: {', '.join(ARCHITECTURES)})."
        )
    size = model["input_size"]
    if len(size) != 2 or not all(isinstance(v, int) and 16 <= v <= 2048 for v in size):
        problems.append(f"{where}: input_size must be [height, width], integers 16..2048.")
    if len(model["class_labels"]) != 2:
        problems.append(f"{where}: class_labels must name exactly two classes [negative, positive].")
    try:
        threshold = float(model["threshold"])
    except OverflowError:  # an integer too large for a float
        threshold = math.inf
    if not (0.0 < threshold < 1.0) or math.isnan(threshold):
        problems.append(f"{where}: threshold must be strictly between 0 and 1, got {threshold}.")
    sha = model.get("sha256")
    if sha is not None and (
        not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)
    ):
        problems.append(f"{where}: sha256 must be 64 lowercase hex characters.")
    if model.get("status", "validated") not in STATUSES:
        problems.append(f"{where}: status must be one of {', '.join(STATUSES)}.")
    calibration = model.get("calibration") or {"method": "none"}
    if not isinstance(calibration, dict) or calibration.get("method") not in CALIBRATION_METHODS:
        problems.append(f"{where}: calibration.method must be one of {', '.join(CALIBRATION_METHODS)}.")
    elif calibration["method"] != "none":
        for key in ("a", "b"):
            if not isinstance(calibration.get(key), int | float):
                problems.append(f"{where}: calibration.{key} must be a number.")
    return problems


def registry_sync(source: str | Path, target: str | Path) -> list[str]:
    """Bring a deployment's own registry (`target`, on a volume every container shares, where
    admins switch active models) up to date with the one shipped in the image (`source`).

    - No target yet: it becomes a copy of the source.
    - Models the target lacks are added; a condition with no active model in the target takes
      the source's choice. Everything the target already has (the admins' choices, models they
      registered) is left exactly as it is.
    Artifact paths are written absolute, since the target lives elsewhere than the models.
    Returns one line per change, for the log; the target is written only if something changed.
    """
    shipped = Registry.load(source)
    target = Path(target)
    deployed = (
        Registry.load(target)
        if target.exists()
        else Registry(path=target, extra={k: v for k, v in shipped.extra.items()})
    )
    changes: list[str] = []
    for model_id, entry in sorted(shipped.models.items()):
        if model_id not in deployed.models:
            deployed.register({**entry.raw, "artifact": str(shipped.artifact_path(entry).resolve())})
            changes.append(f"added model {model_id}")
    for condition, model_id in sorted(shipped.active_models.items()):
        if condition not in deployed.active_models:
            deployed.set_active(model_id)
            changes.append(f"{condition}: active model {model_id}")
    if changes:
        deployed.save()
    return changes
