"""After the fit: calibrate and threshold on validation, evaluate on test, compare with the
thumbnail baseline, decide the status, write plots, card and metrics.json; the registry entry."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from core.architectures import ARCHITECTURES
from core.calibration import apply_calibration
from core.training.baseline import compare_at_operating_point, thumbnail_baseline
from core.training.config import (
    CLASS_LABELS,
    MIN_CALIBRATION_PER_CLASS,
    MIN_TEST_IMAGES,
    MIN_TEST_POSITIVES,
    POPULATIONS,
    PROTOCOLS,
    Stage,
    TrainConfig,
)
from core.training.data import ArraySplit
from core.training.datasets import class_weights
from core.training.evaluation import (
    choose_threshold,
    evaluate_predictions,
    fit_calibration,
    roc_auc,
    threshold_rule_text,
)
from core.training.model_ops import predict_probabilities
from core.training.plots import plot_confusion, plot_reliability, plot_roc


def calibrate_on_validation(y: np.ndarray, p_raw: np.ndarray, *, method: str) -> dict[str, Any]:
    """Fit the calibration on validation predictions, or none when there are too few cases:
    a calibration fitted on a handful of separable cases is degenerate (a -> infinity)."""
    per_class = np.bincount(np.asarray(y).astype(int), minlength=2)
    if per_class.min() < MIN_CALIBRATION_PER_CLASS:
        return {
            "method": "none",
            "reason": (
                f"too few validation images to fit a calibration ({per_class[0]} negative / "
                f"{per_class[1]} positive; need {MIN_CALIBRATION_PER_CLASS} of each): "
                "probabilities are the model's raw output"
            ),
        }
    return fit_calibration(y, p_raw, method=method)


def finalize_model(
    model: Any,
    *,
    config: TrainConfig,
    out_dir: Path,
    train: ArraySplit,
    val: ArraySplit,
    test: ArraySplit | None,
    counts: dict[str, dict[str, int]],
    history: list[dict[str, float]],
    epochs_run: int,
    wall_s: float,
    stopped_early: bool,
    stages: Sequence[Stage],
    command: str | None,
    log: Callable[[str], None] = print,
    artifact_root: Path | None = None,
    sittings: int = 1,
    cross_validation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Calibrate + threshold on val, evaluate val/test, write plots, card and metrics.json;
    return the registry entry (not yet registered)."""
    from core.registry import sha256_file
    from core.training.model_card import write_card

    assert config.model_id and config.input_size
    labels = CLASS_LABELS[config.condition]
    val_raw = predict_probabilities(model, val.x)
    calibration = calibrate_on_validation(val.y, val_raw, method=config.calibration)
    val_cal = apply_calibration(val_raw, calibration)
    threshold = choose_threshold(
        val.y, val_cal, min_sensitivity=config.min_sensitivity, confidence=config.threshold_confidence
    )
    metrics = {
        "val": evaluate_predictions(
            val.y, val_cal, threshold, n_boot=config.n_boot, seed=config.seed, groups=val.groups
        )
    }
    metrics["val"]["auc_raw"] = round(roc_auc(val.y, val_raw), 4)
    metrics["val"]["mean_probability_raw"] = round(float(val_raw.mean()), 4)
    eval_split, eval_set, eval_raw = "val", val, val_raw
    if test is not None and test.n:
        test_raw = predict_probabilities(model, test.x)
        test_cal = apply_calibration(test_raw, calibration)
        metrics["test"] = evaluate_predictions(
            test.y, test_cal, threshold, n_boot=config.n_boot, seed=config.seed, groups=test.groups
        )
        metrics["test"]["mean_probability_raw"] = round(float(test_raw.mean()), 4)
        eval_split, eval_set, eval_raw = "test", test, test_raw
    eval_cal = apply_calibration(eval_raw, calibration)
    m = metrics[eval_split]
    title = f"{config.model_id} ({eval_split}, n={m['n']})"
    plot_roc(
        out_dir / "roc.png", eval_set.y, eval_cal, title=title, threshold=threshold, auc_ci=m["auc_ci95"]
    )
    plot_reliability(out_dir / "reliability.png", eval_set.y, eval_cal, p_raw=eval_raw, title=title)
    plot_confusion(out_dir / "confusion.png", m["confusion"], labels=labels, title=title)
    baseline = baseline_beside_model(
        train, val, eval_set, eval_cal, threshold, config=config, split=eval_split
    )
    log(
        f"{eval_split}: AUC {m['auc']} {m['auc_ci95']}, accuracy {m['accuracy']}, "
        f"sensitivity {m['sensitivity']}, specificity {m['specificity']}, threshold "
        f"{threshold:.4f}, Brier skill {m['brier_skill']}; baseline AUC {baseline['auc']}, "
        f"at its operating point {baseline.get('operating_point')}; "
        f"beats baseline: {baseline.get('comparison', {}).get('beats_baseline')}"
    )

    status, reason = decide_status(config, metrics, baseline, eval_split)
    # Registry paths are relative to the registry file's folder.
    rel = (
        Path(os.path.relpath(out_dir.resolve(), artifact_root))
        if artifact_root
        else Path("models") / config.model_id
    )
    weights_name = Path(config.imagenet_weights).name if config.imagenet_weights else None
    entry: dict[str, Any] = {
        "id": config.model_id,
        "condition": config.condition,
        "architecture": config.architecture,
        "family": ARCHITECTURES[config.architecture]["family"],
        "input_size": list(config.input_size),
        "class_labels": labels,
        "preprocessing": {"color": "rgb", "resize": "area/linear", "scale": "x/255"},
        "gradcam_layer": None,
        "threshold": round(float(threshold), 6),
        "threshold_rule": threshold_rule_text(config.min_sensitivity, config.threshold_confidence),
        "calibration": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in calibration.items()},
        "metrics": metrics,
        "baseline": baseline,
        "population": POPULATIONS.get(config.condition),
        "artifact": str(rel / "model.keras"),
        "sha256": sha256_file(out_dir / "model.keras"),
        "status": status,
        "training": {
            "data": str(config.data),
            "n": counts,
            "n_used": {
                "train": train.counts(),
                "val": val.counts(),
                **({"test": test.counts()} if test is not None else {}),
            },
            "protocol": config.protocol,
            "stages": [asdict(s) for s in stages],
            "epochs_planned": config.epochs,
            "epochs_run": epochs_run,
            "stopped_early": stopped_early,
            "best_val_auc_during_training": max((h.get("val_auc", 0.0) for h in history), default=None),
            "batch_size": config.batch_size,
            "early_stopping_patience": int(config.patience or PROTOCOLS[config.protocol]["patience_stop"]),
            "learning_rate": config.lr,
            "optimizer": "Adam (clipnorm 1.0)",
            "class_weights": class_weights(train.y),
            "augmentation": {
                "rotation_degrees": config.rotation_degrees,
                "zoom": config.zoom,
                "brightness": config.brightness,
                "contrast": config.contrast,
                "horizontal_flip": config.horizontal_flip,
                "enabled": config.augment,
                "shortcut": (
                    "centre-biased crops, blanked border strips, pasted text-like markers, gamma"
                    if config.shortcut_augment
                    else None
                ),
            },
            "seed": config.seed,
            "imagenet_weights": weights_name,
            "batchnorm": "backbone BN frozen" if weights_name else "all BN trained",
            "wall_time_s": round(wall_s, 1),
            "sittings": sittings,
            "hardware": f"{platform.machine()} CPU x{os.cpu_count()}",
            "command": command,
            "notes": list(config.notes),
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "card": str(rel / "card.md"),
    }
    if status == "experimental":
        entry["experimental_reason"] = reason
    if cross_validation is not None:
        entry["cross_validation"] = cross_validation
    (out_dir / "metrics.json").write_text(
        json.dumps({"metrics": metrics, "baseline": baseline, "history": history}, indent=1)
    )
    write_card(out_dir / "card.md", entry)
    return entry


def baseline_beside_model(
    train: ArraySplit,
    val: ArraySplit,
    evaluated: ArraySplit,
    p_model: np.ndarray,
    threshold: float,
    *,
    config: TrainConfig,
    split: str,
) -> dict[str, Any]:
    """The 8x8-thumbnail baseline on the evaluated split, at its own operating point (chosen
    on validation by the same rule as the model), and the paired comparison with the model."""
    baseline = thumbnail_baseline(
        train.x,
        train.y,
        evaluated.x,
        evaluated.y,
        n_boot=config.n_boot,
        val_x=val.x,
        val_y=val.y,
        min_sensitivity=config.min_sensitivity,
        confidence=config.threshold_confidence,
        groups=evaluated.groups,
    )
    p_base = baseline.pop("_p_test")
    baseline["split"] = split
    if "operating_point" in baseline:
        baseline["comparison"] = compare_at_operating_point(
            evaluated.y,
            p_model,
            threshold,
            p_base,
            baseline["operating_point"]["threshold"],
            groups=evaluated.groups,
            n_boot=config.n_boot,
            seed=config.seed,
        )
    return baseline


def decide_status(
    config: TrainConfig, metrics: dict[str, Any], baseline: dict[str, Any], split: str
) -> tuple[str, str | None]:
    """'validated' only when nothing below holds; otherwise 'experimental' with the reasons
    in words (the admin page and the card show them)."""
    reasons = [config.experimental_reason] if config.experimental_reason else []
    m = metrics.get(split, {})
    if split != "test":
        reasons.append("no independent test split: figures are on validation images")
    if m.get("n", 0) < MIN_TEST_IMAGES or m.get("n_positive", 0) < MIN_TEST_POSITIVES:
        reasons.append(
            f"tiny {split} set ({m.get('n_negative')} negative / "
            f"{m.get('n_positive')} positive images): the figures are too "
            "uncertain to validate the model"
        )
    lo = (m.get("auc_ci95") or [None])[0]
    if lo is None or lo <= 0.5:
        reasons.append(
            f"the 95% interval of the {split} AUC ({m.get('auc_ci95')}) reaches "
            "0.5: it may be no better than chance"
        )
    comparison = baseline.get("comparison")
    if comparison is not None and not comparison["beats_baseline"]:
        d = comparison["balanced_accuracy_difference"]
        ci = comparison["balanced_accuracy_difference_ci95"]
        reasons.append(
            f"at its operating point it does not clearly beat logistic regression "
            f"on 8x8 thumbnails (balanced accuracy difference {d} [{ci[0]}, "
            f"{ci[1]}]): it may rely on global brightness/layout shortcuts"
        )
    if config.status == "experimental" or reasons:
        return "experimental", "; ".join(reasons) or "experimental model: not validated"
    return config.status or "validated", None
