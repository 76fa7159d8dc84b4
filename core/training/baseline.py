"""The 8x8-thumbnail baseline (logistic regression on area-downsampled thumbnails) and the paired
comparison of two classifiers at their operating points. numpy/scikit-learn, no TensorFlow."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from core.training.evaluation import (
    DEFAULT_MIN_SENSITIVITY,
    _arrays,
    _finite,
    bootstrap_intervals,
    brier_skill,
    choose_threshold,
    confusion,
    group_resampler,
    proportion_intervals,
    roc_auc,
    threshold_metrics,
)


def thumbnail_features(gray: np.ndarray, *, size: int = 8) -> np.ndarray:
    """uint8 (n, h, w) -> float (n, size*size): area-downsampled thumbnails."""
    import cv2

    return (
        np.stack([cv2.resize(g, (size, size), interpolation=cv2.INTER_AREA).ravel() for g in gray]).astype(
            np.float64
        )
        / 255.0
    )


def thumbnail_probabilities(
    train_x: np.ndarray, train_y: np.ndarray, *others: np.ndarray, size: int = 8
) -> list[np.ndarray]:
    """Fit logistic regression on train thumbnails -> its probabilities for each of `others`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    clf.fit(thumbnail_features(train_x, size=size), train_y)
    return [clf.predict_proba(thumbnail_features(x, size=size))[:, 1] for x in others]


def thumbnail_baseline(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    size: int = 8,
    n_boot: int = 1000,
    seed: int = 0,
    val_x: np.ndarray | None = None,
    val_y: np.ndarray | None = None,
    min_sensitivity: float = DEFAULT_MIN_SENSITIVITY,
    confidence: float | None = None,
    groups: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """The trivial shortcut baseline: logistic regression on 8x8 thumbnails -> test AUC + CI,
    and, when a validation split is given, its operating point: a threshold chosen on
    validation by the models' own rule, applied to test (accuracy, sensitivity, specificity
    with exact intervals). Its test probabilities are returned under "_p_test" (drop before
    storing) for paired comparisons.

    What a CNN scores above this is what it learned beyond global brightness/layout cues
    (side markers, acquisition differences).
    """
    others = [test_x] + ([val_x] if val_x is not None else [])
    probs = thumbnail_probabilities(train_x, train_y, *others, size=size)
    p = probs[0]
    ci = bootstrap_intervals(test_y, p, 0.5, n_boot=n_boot, seed=seed, groups=groups)["auc"]
    out: dict[str, Any] = {
        "method": f"logistic regression on {size}x{size} thumbnails",
        "auc": _finite(roc_auc(test_y, p)),
        "auc_ci95": [_finite(ci[0]), _finite(ci[1])],
        "n_train": int(len(train_y)),
        "n_test": int(len(test_y)),
        "_p_test": p,
    }
    if val_x is not None and val_y is not None and int(np.sum(val_y)) > 0:
        t = choose_threshold(val_y, probs[1], min_sensitivity=min_sensitivity, confidence=confidence)
        out["operating_point"] = operating_point(test_y, p, t)
        out["brier_skill"] = _finite(brier_skill(test_y, p))
    return out


def operating_point(y: Any, p: Any, threshold: float) -> dict[str, Any]:
    """Accuracy, sensitivity, specificity at a threshold with exact 95% intervals."""
    counts = confusion(y, p, threshold)
    m = threshold_metrics(y, p, threshold)
    ci = proportion_intervals(counts)
    out: dict[str, Any] = {"threshold": round(float(threshold), 6), "confusion": counts}
    for name in ("accuracy", "sensitivity", "specificity"):
        out[name] = _finite(m[name])
        out[f"{name}_ci95"] = [_finite(ci[name][0]), _finite(ci[name][1])]
    return out


def compare_at_operating_point(
    y: Any,
    p_model: Any,
    t_model: float,
    p_base: Any,
    t_base: float,
    *,
    groups: Sequence[Any] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Model minus baseline at their own operating points: differences in accuracy,
    sensitivity, specificity and balanced accuracy with paired (same resampled patients)
    bootstrap 95% intervals. `beats_baseline`: the balanced-accuracy difference's interval
    lies above 0 (both thresholds aim at the same sensitivity, so the gain must be real)."""
    y, pm = _arrays(y, p_model)
    _, pb = _arrays(y, p_base)
    rng = np.random.default_rng(seed)
    draw = group_resampler(y.size, groups, rng)
    names = ("accuracy", "sensitivity", "specificity", "balanced_accuracy")

    def diffs(idx: np.ndarray) -> list[float]:
        a = threshold_metrics(y[idx], pm[idx], t_model)
        b = threshold_metrics(y[idx], pb[idx], t_base)
        a["balanced_accuracy"] = (a["sensitivity"] + a["specificity"]) / 2
        b["balanced_accuracy"] = (b["sensitivity"] + b["specificity"]) / 2
        return [a[k] - b[k] for k in names]

    point = diffs(np.arange(y.size))
    boot = np.array([diffs(draw()) for _ in range(n_boot)], dtype=np.float64)
    out: dict[str, Any] = {}
    for j, name in enumerate(names):
        vals = boot[:, j][~np.isnan(boot[:, j])]
        lo, hi = (
            (float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975)))
            if vals.size
            else (float("nan"), float("nan"))
        )
        out[f"{name}_difference"] = _finite(point[j])
        out[f"{name}_difference_ci95"] = [_finite(lo), _finite(hi)]
    lo = out["balanced_accuracy_difference_ci95"][0]
    out["beats_baseline"] = bool(lo is not None and lo > 0)
    out["rule"] = (
        "model beats the baseline when the paired bootstrap 95% interval of the "
        "balanced-accuracy difference at the two operating points lies above 0"
    )
    return out
