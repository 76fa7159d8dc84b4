"""Registry entries of trained models: register one, re-evaluate one with today's rules
(refinalize_model), annotate one, remove one."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.training.config import PROTOCOLS, THRESHOLD_CONFIDENCE, TrainConfig
from core.training.data import ArraySplit, load_arrays, load_samples, split_counts
from core.training.evaluation import DEFAULT_MIN_SENSITIVITY
from core.training.finalize import finalize_model


def register_entry(entry: dict[str, Any], *, registry_path: str | Path) -> None:
    """Register a trained model, inactive: switching it on is a checked, audited step of its
    own (web.clinical.registry.activation; `manage.py train --activate --reason`)."""
    from core.registry import Registry

    registry_path = Path(registry_path)
    registry = Registry.load(registry_path)
    registry.register(entry)
    registry.save()


# Fields other helpers write into an entry; a re-evaluation keeps them.
KEPT_FIELDS = (
    "applicability",
    "gradcam_review",
    "gradcam_layer",
    "gradcam_position_reference",
    "joint_crop",
    "limitations",
    "inactive_reason",
    "threshold_reason",
    "cross_validation",
)


def _load_splits(
    config: TrainConfig,
) -> tuple[ArraySplit, ArraySplit, ArraySplit | None, dict[str, dict[str, int]]]:
    samples = load_samples(config.data, condition=config.condition)
    counts = split_counts(samples)
    cache = config.cache_dir

    def arrays(split: str) -> ArraySplit | None:
        chosen = [s for s in samples if s.split == split]
        return (
            load_arrays(chosen, input_size=config.input_size or (224, 224), cache_dir=cache)
            if chosen
            else None
        )

    train, val, test = arrays(config.train_split), arrays(config.val_split), arrays(config.test_split)
    if train is None or val is None:
        raise ValueError(f"{config.data} needs a '{config.train_split}' and a '{config.val_split}' split")
    return train, val, test, counts


def _previous_history(metrics_path: Path) -> list[dict[str, float]]:
    """The per-epoch history an earlier finalize wrote, so a re-evaluation keeps it."""
    try:
        history = json.loads(metrics_path.read_text()).get("history", [])
    except (OSError, ValueError):
        return []
    return history if isinstance(history, list) else []


def refinalize_model(
    registry_path: str | Path,
    model_id: str,
    *,
    data: str | Path,
    cache_dir: str | Path | None = None,
    n_boot: int = 1000,
    min_sensitivity: float = DEFAULT_MIN_SENSITIVITY,
    threshold_confidence: float | None = THRESHOLD_CONFIDENCE,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Re-run calibration, threshold, evaluation, baseline, status and card of a registered
    model with today's rules, on the same splits; the artifact (and its checksum) is not
    touched, nor the training record or the fields other tools wrote (KEPT_FIELDS,
    metrics.test.pointing_game). Returns the new entry, registered under the same id (active
    or not as before)."""
    import keras

    from core.registry import Registry
    from core.training.model_card import write_card

    registry = Registry.load(registry_path)
    old = registry.entry(model_id).raw
    root = Path(registry_path).resolve().parent
    t = old.get("training", {})
    config = TrainConfig(
        condition=old["condition"],
        data=str(data),
        architecture=old["architecture"],
        model_id=model_id,
        input_size=tuple(old["input_size"]),
        # Boxed heads record "boxed head", which only their trainer knows; the protocol plays
        # no part in re-evaluation, and the training record is kept as it was.
        protocol=t.get("protocol", "quick") if t.get("protocol") in PROTOCOLS else "quick",
        seed=int(t.get("seed", 42)),
        calibration=(old.get("calibration") or {}).get("method", "platt")
        if (old.get("calibration") or {}).get("method") != "none"
        else "platt",
        min_sensitivity=min_sensitivity,
        threshold_confidence=threshold_confidence,
        n_boot=n_boot,
        cache_dir=str(cache_dir) if cache_dir else None,
    ).resolved()
    train, val, test, counts = _load_splits(config)
    model = keras.models.load_model(root / old["artifact"], compile=False)
    out_dir = (root / old["artifact"]).parent
    entry = finalize_model(
        model,
        config=config,
        out_dir=out_dir,
        train=train,
        val=val,
        test=test,
        counts=counts,
        history=_previous_history(out_dir / "metrics.json"),
        epochs_run=int(t.get("epochs_run", 0)),
        wall_s=float(t.get("wall_time_s", 0)),
        stopped_early=bool(t.get("stopped_early")),
        stages=[],
        command=None,
        log=log,
        artifact_root=root,
    )
    merged = {
        **entry,
        "training": t,
        "created": old.get("created", entry["created"]),
        "re_evaluated": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    for key in KEPT_FIELDS:
        if key in old:
            merged[key] = old[key]
    pointing = old.get("metrics", {}).get("test", {}).get("pointing_game")
    if pointing is not None and "test" in merged["metrics"]:
        merged["metrics"]["test"]["pointing_game"] = pointing
    if merged["status"] != "experimental":
        merged.pop("experimental_reason", None)
    write_card(out_dir / "card.md", merged)
    registry = Registry.load(registry_path)  # re-read: others may have written meanwhile
    registry.register(merged)
    registry.save()
    log(
        f"re-evaluated {model_id}: status {merged['status']}"
        + (f" ({merged.get('experimental_reason')})" if merged["status"] == "experimental" else "")
    )
    return merged


def remove_model(registry_path: str | Path, model_id: str) -> None:
    """Drop a replaced model's registry entry (its folder is removed with `git rm`); an active
    model cannot be removed: activate its replacement first."""
    from core.registry import Registry

    registry = Registry.load(registry_path)
    entry = registry.entry(model_id)
    if registry.active_models.get(entry.condition) == model_id:
        raise ValueError(f"{model_id} is the active {entry.condition} model: activate its replacement first")
    del registry.models[model_id]
    registry.save()


def annotate_model(registry_path: str | Path, model_id: str, **fields: Any) -> None:
    """Add review fields (e.g. gradcam_review, limitations) to an entry; re-render its card."""
    from core.registry import Registry
    from core.training.model_card import write_card

    registry = Registry.load(registry_path)
    entry = registry.entry(model_id)
    raw = {**entry.raw, **fields}
    registry.models[model_id] = type(entry)(raw)
    registry.save()
    if raw.get("card"):
        write_card(Path(registry_path).resolve().parent / raw["card"], raw)
