"""Metrics, bootstrap intervals, the operating-threshold rule, calibration fitting and plots.

Pure numpy/scipy/scikit-learn (no TensorFlow): every function takes labels y (int, 0/1) and
probabilities p (float, same length) and returns plain numbers, so it is easy to test on
constructed predictions.

Conventions
- "positive" means p >= threshold.
- Calibration follows core.calibration: p_cal = sigmoid(a * logit(p_raw) + b).
- The threshold rule (triage favours sensitivity): on the validation split, take the HIGHEST
  threshold whose sensitivity is still >= min_sensitivity (default 0.90). It is chosen on
  calibrated validation probabilities, and stored and applied on that scale.
- Intervals are percentile bootstrap 95% intervals over cases (resampling images with
  replacement, 1000 resamples, fixed seed); resamples with a single class are skipped for
  metrics that need both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.calibration import apply_calibration, logit, sigmoid

METRICS = ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1")
DEFAULT_MIN_SENSITIVITY = 0.90
EPS = 1e-7


# ----------------------------------------------------------------------------- point metrics


def _arrays(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(np.int64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and probabilities {p.shape} differ in length")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return y, p


def roc_auc(y: Any, p: Any) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties); nan if one class."""
    y, p = _arrays(y, p)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _midranks(p)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _midranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    ranks = np.empty(values.size, dtype=np.float64)
    # Average rank (1-based) over each run of ties.
    _, start, counts = np.unique(sorted_vals, return_index=True, return_counts=True)
    avg = start + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return ranks


def confusion(y: Any, p: Any, threshold: float) -> dict[str, int]:
    """Counts tn, fp, fn, tp with positive = p >= threshold."""
    y, p = _arrays(y, p)
    pred = p >= threshold
    return {
        "tn": int(((y == 0) & ~pred).sum()),
        "fp": int(((y == 0) & pred).sum()),
        "fn": int(((y == 1) & ~pred).sum()),
        "tp": int(((y == 1) & pred).sum()),
    }


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")


def threshold_metrics(y: Any, p: Any, threshold: float) -> dict[str, float]:
    c = confusion(y, p, threshold)
    tn, fp, fn, tp = c["tn"], c["fp"], c["fn"], c["tp"]
    sens = _ratio(tp, tp + fn)
    ppv = _ratio(tp, tp + fp)
    return {
        "accuracy": _ratio(tp + tn, tn + fp + fn + tp),
        "sensitivity": sens,
        "specificity": _ratio(tn, tn + fp),
        "ppv": ppv,
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def point_metrics(y: Any, p: Any, threshold: float) -> dict[str, float]:
    return {"auc": roc_auc(y, p), **threshold_metrics(y, p, threshold)}


def log_loss(y: Any, p: Any) -> float:
    y, p = _arrays(y, p)
    q = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log1p(-q)))


def brier(y: Any, p: Any) -> float:
    y, p = _arrays(y, p)
    return float(np.mean((p - y) ** 2))


def reliability_curve(y: Any, p: Any, *, bins: int = 10) -> dict[str, list[float]]:
    """Equal-width bins of predicted probability: mean prediction, observed rate, count."""
    y, p = _arrays(y, p)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    mean_pred, observed, count = [], [], []
    for b in range(bins):
        m = idx == b
        if m.any():
            mean_pred.append(float(p[m].mean()))
            observed.append(float(y[m].mean()))
            count.append(int(m.sum()))
    return {"mean_predicted": mean_pred, "observed": observed, "count": count}


def expected_calibration_error(y: Any, p: Any, *, bins: int = 10) -> float:
    curve = reliability_curve(y, p, bins=bins)
    n = sum(curve["count"])
    return float(sum(c * abs(m - o) for m, o, c in zip(
        curve["mean_predicted"], curve["observed"], curve["count"], strict=True)) / max(n, 1))


# ----------------------------------------------------------------------------- bootstrap


def bootstrap_intervals(
    y: Any, p: Any, threshold: float, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals for every metric in METRICS."""
    y, p = _arrays(y, p)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {m: [] for m in METRICS}
    n = y.size
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        for name, value in point_metrics(y[idx], p[idx], threshold).items():
            if not math.isnan(value):
                samples[name].append(value)
    alpha = (1 - level) / 2
    out = {}
    for name, values in samples.items():
        if len(values) < max(10, n_boot // 10):
            out[name] = (float("nan"), float("nan"))
        else:
            out[name] = (float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha)))
    return out


def evaluate_predictions(
    y: Any, p: Any, threshold: float, *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """JSON-safe report: n, counts, each metric with `<metric>_ci95`, confusion matrix,
    log-loss, Brier score and ECE of p."""
    y, p = _arrays(y, p)
    point = point_metrics(y, p, threshold)
    ci = bootstrap_intervals(y, p, threshold, n_boot=n_boot, seed=seed)
    report: dict[str, Any] = {
        "n": int(y.size),
        "n_positive": int(y.sum()),
        "n_negative": int(y.size - y.sum()),
        "threshold": float(threshold),
    }
    for name in METRICS:
        report[name] = _finite(point[name])
        report[f"{name}_ci95"] = [_finite(ci[name][0]), _finite(ci[name][1])]
    report["confusion"] = confusion(y, p, threshold)
    report["log_loss"] = log_loss(y, p)
    report["brier"] = brier(y, p)
    report["ece"] = expected_calibration_error(y, p)
    report["mean_probability"] = float(p.mean()) if p.size else None
    return report


def _finite(v: float) -> float | None:
    return None if v is None or math.isnan(v) else round(float(v), 4)


# ----------------------------------------------------------------------------- threshold rule


def choose_threshold(
    y: Any, p: Any, *, min_sensitivity: float = DEFAULT_MIN_SENSITIVITY
) -> float:
    """Highest threshold t with sensitivity(p >= t) >= min_sensitivity on (y, p).

    With k = ceil(min_sensitivity * n_positive), t is the k-th highest positive score: at t,
    exactly the k top-scoring positives (and any ties) are called positive. The result is
    clipped into (0, 1) so it is a valid registry threshold.
    """
    y, p = _arrays(y, p)
    pos = np.sort(p[y == 1])[::-1]
    if pos.size == 0:
        raise ValueError("cannot choose a sensitivity-based threshold without positive cases")
    k = max(1, math.ceil(min_sensitivity * pos.size - 1e-9))
    t = float(pos[k - 1])
    return float(np.clip(t, 1e-6, 1 - 1e-6))


# ----------------------------------------------------------------------------- calibration


def _nll(y: np.ndarray, z: np.ndarray) -> float:
    # Numerically stable binary cross-entropy on logits.
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(y: Any, p_raw: Any) -> dict[str, Any]:
    """Temperature scaling: a = 1/T minimising validation log-loss, b = 0."""
    from scipy.optimize import minimize_scalar

    y, p = _arrays(y, p_raw)
    z = logit(p)
    res = minimize_scalar(lambda log_a: _nll(y, math.exp(log_a) * z), bounds=(-6, 4),
                          method="bounded")
    a = float(math.exp(res.x))
    return {"method": "temperature", "a": a, "b": 0.0, "temperature": 1.0 / a}


def fit_platt(y: Any, p_raw: Any) -> dict[str, Any]:
    """Platt scaling on the logit: (a, b) minimising validation log-loss (no penalty)."""
    from scipy.optimize import minimize

    y, p = _arrays(y, p_raw)
    z = logit(p)

    def fun(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = w[0] * z + w[1]
        q = sigmoid(s)
        grad = np.array([np.mean((q - y) * z), np.mean(q - y)])
        return _nll(y, s), grad

    res = minimize(fun, x0=np.array([1.0, 0.0]), jac=True, method="L-BFGS-B",
                   bounds=[(1e-3, 100.0), (-50.0, 50.0)])
    return {"method": "platt", "a": float(res.x[0]), "b": float(res.x[1])}


def fit_calibration(y: Any, p_raw: Any, *, method: str = "platt") -> dict[str, Any]:
    """Fit on validation predictions; records the log-loss before and after."""
    y, p = _arrays(y, p_raw)
    if method == "temperature":
        cal = fit_temperature(y, p)
    elif method == "platt":
        cal = fit_platt(y, p)
    else:
        raise ValueError(f"unknown calibration method '{method}' (temperature or platt)")
    cal["fitted_on"] = "val"
    cal["val_log_loss_raw"] = round(log_loss(y, p), 5)
    cal["val_log_loss_calibrated"] = round(log_loss(y, apply_calibration(p, cal)), 5)
    return cal


# ----------------------------------------------------------------------------- ROC curve


def roc_curve_points(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), thresholds descending, starting at (0, 0)."""
    y, p = _arrays(y, p)
    thresholds = np.unique(p)[::-1]
    n_pos = max(int(y.sum()), 1)
    n_neg = max(int(y.size - y.sum()), 1)
    tpr = [0.0] + [float(((p >= t) & (y == 1)).sum()) / n_pos for t in thresholds]
    fpr = [0.0] + [float(((p >= t) & (y == 0)).sum()) / n_neg for t in thresholds]
    return np.array(fpr), np.array(tpr), np.concatenate([[np.inf], thresholds])


# ----------------------------------------------------------------------------- baseline


def thumbnail_features(gray: np.ndarray, *, size: int = 8) -> np.ndarray:
    """uint8 (n, h, w) -> float (n, size*size): area-downsampled thumbnails."""
    import cv2

    return np.stack([
        cv2.resize(g, (size, size), interpolation=cv2.INTER_AREA).ravel() for g in gray
    ]).astype(np.float64) / 255.0


def thumbnail_baseline(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
    *, size: int = 8, n_boot: int = 1000, seed: int = 0,
) -> dict[str, Any]:
    """The trivial shortcut baseline: logistic regression on 8x8 thumbnails -> test AUC + CI.

    What a CNN scores above this is what it learned beyond global brightness/layout cues
    (side markers, acquisition differences).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    clf.fit(thumbnail_features(train_x, size=size), train_y)
    p = clf.predict_proba(thumbnail_features(test_x, size=size))[:, 1]
    ci = bootstrap_intervals(test_y, p, 0.5, n_boot=n_boot, seed=seed)["auc"]
    return {"method": f"logistic regression on {size}x{size} thumbnails",
            "auc": _finite(roc_auc(test_y, p)), "auc_ci95": [_finite(ci[0]), _finite(ci[1])],
            "n_train": int(len(train_y)), "n_test": int(len(test_y))}


# ----------------------------------------------------------------------------- plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(path: str | Path, y: Any, p: Any, *, title: str, threshold: float | None = None,
             auc_ci: Sequence[float | None] | None = None) -> Path:
    plt = _pyplot()
    fpr, tpr, _ = roc_curve_points(y, p)
    auc = roc_auc(y, p)
    label = f"AUC {auc:.3f}"
    if auc_ci and None not in auc_ci:
        label += f" (95% CI {auc_ci[0]:.3f}-{auc_ci[1]:.3f})"
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot(fpr, tpr, lw=2, label=label)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    if threshold is not None:
        m = threshold_metrics(y, p, threshold)
        ax.scatter([1 - m["specificity"]], [m["sensitivity"]], c="red", zorder=3,
                   label=f"threshold {threshold:.3f}")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    return _save_figure(plt, fig, path)


def _save_figure(plt: Any, fig: Any, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_reliability(path: str | Path, y: Any, p_cal: Any, *, title: str,
                     p_raw: Any | None = None) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect")
    for probs, name, style in ((p_raw, "raw", "o:"), (p_cal, "calibrated", "o-")):
        if probs is None:
            continue
        c = reliability_curve(y, probs)
        ax.plot(c["mean_predicted"], c["observed"], style,
                label=f"{name} (ECE {expected_calibration_error(y, probs):.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    return _save_figure(plt, fig, path)


def plot_confusion(path: str | Path, counts: dict[str, int], *, labels: Sequence[str],
                   title: str) -> Path:
    plt = _pyplot()
    m = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]])
    fig, ax = plt.subplots(figsize=(3.8, 3.4), dpi=100)
    ax.imshow(m, cmap="Blues")
    for i in range(2):
        for j in range(2):
            ax.text(j, i, str(m[i, j]), ha="center", va="center",
                    color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_xticks([0, 1], [f"pred {labels[0]}", f"pred {labels[1]}"], fontsize=7)
    ax.set_yticks([0, 1], [f"true {labels[0]}", f"true {labels[1]}"], fontsize=7)
    ax.set_title(title, fontsize=9)
    return _save_figure(plt, fig, path)
