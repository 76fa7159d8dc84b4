"""Metrics, bootstrap intervals, the operating-threshold rule, calibration fitting.

The thumbnail baseline is in core.training.baseline, the plots in core.training.plots.

Pure numpy/scipy/scikit-learn (no TensorFlow): every function takes labels y (int, 0/1) and
probabilities p (float, same length) and returns plain numbers, so it is easy to test on
constructed predictions.

Conventions
- "positive" means p >= threshold.
- Calibration follows core.calibration: p_cal = sigmoid(a * logit(p_raw) + b).
- The threshold rule (triage favours sensitivity): on the validation split, take the HIGHEST
  threshold whose sensitivity is still >= min_sensitivity (default 0.90). It is chosen on
  calibrated validation probabilities, and stored and applied on that scale.
- An optional safety margin (`confidence`): the threshold is then the highest one whose
  validation sensitivity has its one-sided exact lower confidence bound >= min_sensitivity, so
  the sensitivity promised is likely to hold on new images (a threshold tuned to exactly 0.90
  on validation gave 0.847 on test for cardiomegaly).
- Intervals: proportions (accuracy, sensitivity, specificity, PPV, NPV) get exact
  Clopper-Pearson 95% intervals (a 100% specificity on 100 cases is [0.964, 1], not [1, 1]);
  AUC and F1 get percentile bootstrap 95% intervals that resample whole patient groups when
  groups are given (images of one patient are not independent), 1000 resamples, fixed seed;
  resamples with a single class are skipped for metrics that need both.
- AUC, ROC, Brier, log-loss and the reliability curve come from scikit-learn; the Brier
  skill score is 1 - Brier / Brier of always predicting the split's base rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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
    """Area under the ROC curve (ties count half a pair); nan if only one class is present."""
    from sklearn.metrics import roc_auc_score

    y, p = _arrays(y, p)
    if y.size == 0 or y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, p))


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
    from sklearn.metrics import log_loss as sk_log_loss

    y, p = _arrays(y, p)
    return float(sk_log_loss(y, np.clip(p, EPS, 1 - EPS), labels=[0, 1]))


def brier(y: Any, p: Any) -> float:
    from sklearn.metrics import brier_score_loss

    y, p = _arrays(y, p)
    return float(brier_score_loss(y, np.clip(p, 0.0, 1.0), pos_label=1))


def brier_skill(y: Any, p: Any) -> float:
    """1 - Brier / Brier of the base rate (always predicting the split's prevalence).

    0 = no better than knowing the prevalence, 1 = perfect, < 0 = worse than the prevalence.
    """
    y, p = _arrays(y, p)
    rate = float(y.mean()) if y.size else float("nan")
    reference = rate * (1.0 - rate)
    return float(1.0 - brier(y, p) / reference) if reference > 0 else float("nan")


def reliability_curve(y: Any, p: Any, *, bins: int = 10) -> dict[str, list[float]]:
    """Equal-width bins of predicted probability: mean prediction, observed rate, count
    (scikit-learn's calibration_curve; empty bins left out)."""
    from sklearn.calibration import calibration_curve

    y, p = _arrays(y, p)
    p = np.clip(p, 0.0, 1.0)  # scikit-learn refuses rounding noise outside [0, 1]
    if y.size == 0:
        return {"mean_predicted": [], "observed": [], "count": []}
    edges = np.linspace(0.0, 1.0, bins + 1)
    # The same bin rule as calibration_curve (searchsorted on the inner edges).
    counts = np.bincount(np.searchsorted(edges[1:-1], p), minlength=bins)
    if y.min() == y.max():  # calibration_curve needs two classes; the rates are trivial
        idx = np.searchsorted(edges[1:-1], p)
        keep = [b for b in range(bins) if counts[b]]
        return {
            "mean_predicted": [float(p[idx == b].mean()) for b in keep],
            "observed": [float(y[0])] * len(keep),
            "count": [int(counts[b]) for b in keep],
        }
    observed, mean_pred = calibration_curve(y, p, n_bins=bins, strategy="uniform")
    return {
        "mean_predicted": [float(v) for v in mean_pred],
        "observed": [float(v) for v in observed],
        "count": [int(c) for c in counts if c],
    }


def expected_calibration_error(y: Any, p: Any, *, bins: int = 10) -> float:
    curve = reliability_curve(y, p, bins=bins)
    n = sum(curve["count"])
    return float(
        sum(
            c * abs(m - o)
            for m, o, c in zip(curve["mean_predicted"], curve["observed"], curve["count"], strict=True)
        )
        / max(n, 1)
    )


def clopper_pearson(k: int, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """Exact two-sided interval for a proportion k/n; (nan, nan) when n == 0."""
    from scipy.stats import beta

    if n <= 0:
        return float("nan"), float("nan")
    alpha = 1.0 - level
    lo = 0.0 if k <= 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k >= n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def proportion_intervals(counts: dict[str, int], *, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Clopper-Pearson intervals of accuracy, sensitivity, specificity, PPV, NPV from a
    confusion matrix."""
    tn, fp, fn, tp = counts["tn"], counts["fp"], counts["fn"], counts["tp"]
    parts = {
        "accuracy": (tp + tn, tn + fp + fn + tp),
        "sensitivity": (tp, tp + fn),
        "specificity": (tn, tn + fp),
        "ppv": (tp, tp + fp),
        "npv": (tn, tn + fn),
    }
    return {name: clopper_pearson(k, n, level=level) for name, (k, n) in parts.items()}


# ----------------------------------------------------------------------------- bootstrap


def group_resampler(n: int, groups: Sequence[Any] | None, rng: np.random.Generator) -> Any:
    """-> a function returning one bootstrap resample of indices 0..n-1: whole groups
    (patients) drawn with replacement when groups are given, single cases otherwise."""
    if groups is None:
        return lambda: rng.integers(0, n, n)
    if len(groups) != n:
        raise ValueError(f"{len(groups)} groups for {n} cases")
    _, codes = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    members = [np.flatnonzero(codes == g) for g in range(codes.max() + 1)] if n else []
    if len(members) == n:  # one case per group: the plain case bootstrap, faster
        return lambda: rng.integers(0, n, n)
    return lambda: np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])


def bootstrap_intervals(
    y: Any,
    p: Any,
    threshold: float,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    groups: Sequence[Any] | None = None,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals for every metric in METRICS (by group when given)."""
    y, p = _arrays(y, p)
    rng = np.random.default_rng(seed)
    draw = group_resampler(y.size, groups, rng)
    samples: dict[str, list[float]] = {m: [] for m in METRICS}
    for _ in range(n_boot):
        idx = draw()
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
    y: Any,
    p: Any,
    threshold: float,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    groups: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """JSON-safe report: n, counts, each metric with `<metric>_ci95` (exact Clopper-Pearson
    for proportions, group bootstrap for AUC and F1), confusion matrix, log-loss, Brier score,
    Brier skill score and ECE of p."""
    y, p = _arrays(y, p)
    point = point_metrics(y, p, threshold)
    counts = confusion(y, p, threshold)
    ci = {
        **bootstrap_intervals(y, p, threshold, n_boot=n_boot, seed=seed, groups=groups),
        **proportion_intervals(counts),
    }
    n_groups = len({str(g) for g in groups}) if groups is not None else int(y.size)
    report: dict[str, Any] = {
        "n": int(y.size),
        "n_positive": int(y.sum()),
        "n_negative": int(y.size - y.sum()),
        "n_groups": n_groups,
        "threshold": float(threshold),
    }
    for name in METRICS:
        report[name] = _finite(point[name])
        report[f"{name}_ci95"] = [_finite(ci[name][0]), _finite(ci[name][1])]
    report["ci_method"] = {
        "proportions": "exact Clopper-Pearson 95%",
        "auc_f1": (
            f"percentile bootstrap 95%, {n_boot} resamples of "
            + (
                f"{n_groups} groups (patients, or images where the data set has no patient ids)"
                if groups is not None
                else "images"
            )
        ),
    }
    report["confusion"] = counts
    report["log_loss"] = log_loss(y, p)
    report["brier"] = brier(y, p)
    report["brier_skill"] = _finite(brier_skill(y, p))
    report["ece"] = expected_calibration_error(y, p)
    report["mean_probability"] = float(p.mean()) if p.size else None
    return report


def _finite(v: float) -> float | None:
    return None if v is None or math.isnan(v) else round(float(v), 4)


# ----------------------------------------------------------------------------- threshold rule


def choose_threshold(
    y: Any,
    p: Any,
    *,
    min_sensitivity: float = DEFAULT_MIN_SENSITIVITY,
    confidence: float | None = None,
) -> float:
    """Highest threshold t with sensitivity(p >= t) >= min_sensitivity on (y, p).

    With k = ceil(min_sensitivity * n_positive), t is the k-th highest positive score: at t,
    exactly the k top-scoring positives (and any ties) are called positive. With
    `confidence` (e.g. 0.95), k is the smallest count whose one-sided exact (Clopper-Pearson)
    lower bound at that confidence reaches min_sensitivity, a margin for the sampling noise of
    the validation estimate; when even k = all positives does not reach it (a small validation
    set), every validation positive is kept. The result is clipped into (0, 1).
    """
    y, p = _arrays(y, p)
    pos = np.sort(p[y == 1])[::-1]
    if pos.size == 0:
        raise ValueError("cannot choose a sensitivity-based threshold without positive cases")
    k = max(1, math.ceil(min_sensitivity * pos.size - 1e-9))
    if confidence is not None:
        level = 1.0 - 2.0 * (1.0 - confidence)  # two-sided level whose lower end is one-sided
        while k < pos.size and clopper_pearson(k, pos.size, level=level)[0] < min_sensitivity:
            k += 1
    t = float(pos[k - 1])
    return float(np.clip(t, 1e-6, 1 - 1e-6))


def threshold_rule_text(min_sensitivity: float, confidence: float | None) -> str:
    if confidence is None:
        return (
            f"highest threshold with validation sensitivity >= {min_sensitivity:.2f} (calibrated probability)"
        )
    return (
        f"highest threshold whose validation sensitivity has a one-sided "
        f"{confidence:.0%} exact lower bound >= {min_sensitivity:.2f} (all validation "
        "positives kept when too few to reach it; calibrated probability)"
    )


# ----------------------------------------------------------------------------- calibration


def _nll(y: np.ndarray, z: np.ndarray) -> float:
    # Numerically stable binary cross-entropy on logits.
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(y: Any, p_raw: Any) -> dict[str, Any]:
    """Temperature scaling: a = 1/T minimising validation log-loss, b = 0."""
    from scipy.optimize import minimize_scalar

    y, p = _arrays(y, p_raw)
    z = logit(p)
    res = minimize_scalar(lambda log_a: _nll(y, math.exp(log_a) * z), bounds=(-6, 4), method="bounded")
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

    res = minimize(
        fun, x0=np.array([1.0, 0.0]), jac=True, method="L-BFGS-B", bounds=[(1e-3, 100.0), (-50.0, 50.0)]
    )
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
    """(fpr, tpr, thresholds), thresholds descending, starting at (0, 0) (scikit-learn)."""
    from sklearn.metrics import roc_curve

    y, p = _arrays(y, p)
    if y.size == 0 or y.min() == y.max():
        return np.array([0.0, 1.0]), np.array([0.0, 1.0]), np.array([np.inf, -np.inf])
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    return fpr, tpr, thresholds
