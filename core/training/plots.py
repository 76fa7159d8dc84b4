"""ROC, reliability and confusion plots of an evaluation (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.training.evaluation import (
    expected_calibration_error,
    reliability_curve,
    roc_auc,
    roc_curve_points,
    threshold_metrics,
)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(
    path: str | Path,
    y: Any,
    p: Any,
    *,
    title: str,
    threshold: float | None = None,
    auc_ci: Sequence[float | None] | None = None,
) -> Path:
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
        ax.scatter(
            [1 - m["specificity"]], [m["sensitivity"]], c="red", zorder=3, label=f"threshold {threshold:.3f}"
        )
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


def plot_reliability(path: str | Path, y: Any, p_cal: Any, *, title: str, p_raw: Any | None = None) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect")
    for probs, name, style in ((p_raw, "raw", "o:"), (p_cal, "calibrated", "o-")):
        if probs is None:
            continue
        c = reliability_curve(y, probs)
        ax.plot(
            c["mean_predicted"],
            c["observed"],
            style,
            label=f"{name} (ECE {expected_calibration_error(y, probs):.3f})",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    return _save_figure(plt, fig, path)


def plot_confusion(path: str | Path, counts: dict[str, int], *, labels: Sequence[str], title: str) -> Path:
    plt = _pyplot()
    m = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]])
    fig, ax = plt.subplots(figsize=(3.8, 3.4), dpi=100)
    ax.imshow(m, cmap="Blues")
    for i in range(2):
        for j in range(2):
            ax.text(
                j,
                i,
                str(m[i, j]),
                ha="center",
                va="center",
                color="white" if m[i, j] > m.max() / 2 else "black",
            )
    ax.set_xticks([0, 1], [f"pred {labels[0]}", f"pred {labels[1]}"], fontsize=7)
    ax.set_yticks([0, 1], [f"true {labels[0]}", f"true {labels[1]}"], fontsize=7)
    ax.set_title(title, fontsize=9)
    return _save_figure(plt, fig, path)
