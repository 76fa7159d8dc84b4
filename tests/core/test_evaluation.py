"""Metrics on constructed predictions equal hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from core.calibration import apply_calibration
from core.evaluation import (
    bootstrap_intervals,
    choose_threshold,
    confusion,
    evaluate_predictions,
    fit_calibration,
    log_loss,
    plot_confusion,
    plot_reliability,
    plot_roc,
    roc_auc,
    threshold_metrics,
    thumbnail_baseline,
)

# 4 negatives, 4 positives. Pairs (pos > neg) counted by hand: 0.9 beats all 4, 0.8 beats 4,
# 0.35 beats 0.1, 0.2, 0.3 (3), 0.35 vs 0.4 loses; 0.6 beats 4 -> 15 of 16 pairs.
Y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
P = np.array([0.1, 0.2, 0.3, 0.4, 0.35, 0.6, 0.8, 0.9])


def test_auc_equals_the_fraction_of_correctly_ordered_pairs() -> None:
    assert roc_auc(Y, P) == pytest.approx(15 / 16)


def test_auc_counts_a_tie_as_half_a_pair() -> None:
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert roc_auc([0, 0, 1], [0.2, 0.5, 0.5]) == pytest.approx(0.75)


def test_auc_is_undefined_with_one_class() -> None:
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_confusion_matrix_and_rates_at_a_threshold_match_hand_counts() -> None:
    # threshold 0.5: predicted positive = 0.6, 0.8, 0.9 -> tp 3, fp 0, fn 1 (0.35), tn 4
    assert confusion(Y, P, 0.5) == {"tn": 4, "fp": 0, "fn": 1, "tp": 3}
    m = threshold_metrics(Y, P, 0.5)
    assert m["accuracy"] == pytest.approx(7 / 8)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(1.0)
    assert m["ppv"] == pytest.approx(1.0)
    assert m["npv"] == pytest.approx(4 / 5)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 0 + 1))


def test_a_case_exactly_at_the_threshold_counts_as_positive() -> None:
    assert confusion([1], [0.4], 0.4)["tp"] == 1


def test_threshold_rule_picks_the_highest_threshold_keeping_sensitivity() -> None:
    # 10 positives: sensitivity >= 0.9 needs 9 of them -> the 9th highest positive score.
    y = np.array([0] * 5 + [1] * 10)
    p = np.array([0.05, 0.1, 0.2, 0.3, 0.5] + [0.15, 0.25, 0.4, 0.55, 0.6, 0.7, 0.8, 0.85,
                                              0.9, 0.95])
    t = choose_threshold(y, p, min_sensitivity=0.9)
    assert t == pytest.approx(0.25)
    assert threshold_metrics(y, p, t)["sensitivity"] >= 0.9
    # Any higher threshold loses sensitivity below 0.9.
    assert threshold_metrics(y, p, t + 1e-6)["sensitivity"] < 0.9
    assert choose_threshold(y, p, min_sensitivity=1.0) == pytest.approx(0.15)


def test_calibration_lowers_the_log_loss_of_a_mis_scaled_model() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    true_logit = np.where(y == 1, 1.0, -1.0) + rng.normal(0, 1.2, y.size)
    # Over-confident (x4) and shifted (-2): like a head whose BatchNorm lags the backbone.
    p_bad = 1 / (1 + np.exp(-(4 * true_logit - 2)))
    for method in ("temperature", "platt"):
        cal = fit_calibration(y, p_bad, method=method)
        assert cal["method"] == method
        assert log_loss(y, apply_calibration(p_bad, cal)) < log_loss(y, p_bad) - 0.1
    platt = fit_calibration(y, p_bad, method="platt")
    assert platt["a"] < 0.5  # it undoes most of the x4 over-confidence
    # Calibration is monotone: the ranking (AUC) does not change.
    assert roc_auc(y, apply_calibration(p_bad, platt)) == pytest.approx(roc_auc(y, p_bad))


def test_bootstrap_interval_contains_the_point_estimate_and_narrows_with_n() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    p = np.clip(0.5 + (y - 0.5) * 0.3 + rng.normal(0, 0.25, y.size), 0, 1)
    wide = bootstrap_intervals(y[:40], p[:40], 0.5, n_boot=300)["auc"]
    narrow = bootstrap_intervals(y, p, 0.5, n_boot=300)["auc"]
    assert narrow[0] <= roc_auc(y, p) <= narrow[1]
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


def test_report_is_json_safe_and_holds_each_metric_with_its_interval() -> None:
    report = evaluate_predictions(Y, P, 0.5, n_boot=200)
    json.dumps(report)
    assert report["n"] == 8 and report["threshold"] == 0.5
    for name in ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1"):
        assert name in report and len(report[f"{name}_ci95"]) == 2
    assert report["confusion"] == {"tn": 4, "fp": 0, "fn": 1, "tp": 3}


def test_plots_are_written_as_png(tmp_path) -> None:
    for path in (
        plot_roc(tmp_path / "roc.png", Y, P, title="t", threshold=0.5, auc_ci=[0.8, 1.0]),
        plot_reliability(tmp_path / "rel.png", Y, P, title="t", p_raw=P ** 2),
        plot_confusion(tmp_path / "cm.png", confusion(Y, P, 0.5), labels=["no", "yes"],
                       title="t"),
    ):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_thumbnail_baseline_finds_a_brightness_shortcut() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200)
    x = (rng.integers(0, 100, (200, 32, 32)) + 60 * y[:, None, None]).astype(np.uint8)
    result = thumbnail_baseline(x[:150], y[:150], x[150:], y[150:], n_boot=100)
    assert result["auc"] > 0.9
