"""Metrics on constructed predictions equal hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from core.calibration import apply_calibration
from core.training.baseline import compare_at_operating_point, thumbnail_baseline
from core.training.evaluation import (
    bootstrap_intervals,
    brier_skill,
    choose_threshold,
    clopper_pearson,
    confusion,
    evaluate_predictions,
    fit_calibration,
    log_loss,
    reliability_curve,
    roc_auc,
    threshold_metrics,
)
from core.training.plots import plot_confusion, plot_reliability, plot_roc

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
    p = np.array([0.05, 0.1, 0.2, 0.3, 0.5] + [0.15, 0.25, 0.4, 0.55, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95])
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
        plot_reliability(tmp_path / "rel.png", Y, P, title="t", p_raw=P**2),
        plot_confusion(tmp_path / "cm.png", confusion(Y, P, 0.5), labels=["no", "yes"], title="t"),
    ):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_thumbnail_baseline_finds_a_brightness_shortcut() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200)
    x = (rng.integers(0, 100, (200, 32, 32)) + 60 * y[:, None, None]).astype(np.uint8)
    result = thumbnail_baseline(x[:150], y[:150], x[150:], y[150:], n_boot=100)
    assert result["auc"] > 0.9


def test_a_perfect_specificity_gets_an_exact_interval_not_a_point() -> None:
    # 100 negatives all called negative: the bootstrap said [1.0, 1.0]; the truth is that
    # 100/100 is compatible with a specificity down to about 96.4%.
    y = np.array([0] * 100 + [1] * 20)
    p = np.array([0.1] * 100 + [0.9] * 18 + [0.05] * 2)
    report = evaluate_predictions(y, p, 0.5, n_boot=100)
    assert report["specificity"] == 1.0
    lo, hi = report["specificity_ci95"]
    assert lo == pytest.approx(0.9638, abs=1e-3) and hi == 1.0
    assert clopper_pearson(18, 20)[0] == pytest.approx(0.683, abs=1e-3)
    assert report["ci_method"]["proportions"].startswith("exact Clopper-Pearson")


def test_brier_skill_is_zero_for_the_base_rate_and_one_for_certainty() -> None:
    y = np.array([0, 0, 0, 1])
    assert brier_skill(y, np.full(4, 0.25)) == pytest.approx(0.0)
    assert brier_skill(y, y.astype(float)) == pytest.approx(1.0)
    assert brier_skill(y, 1.0 - y) < 0  # confidently wrong is worse than the prevalence
    assert evaluate_predictions(y, np.full(4, 0.25), 0.5, n_boot=20)["brier_skill"] == 0.0


def test_the_threshold_margin_asks_more_sensitivity_of_validation_than_the_target() -> None:
    rng = np.random.default_rng(3)
    y = np.array([0] * 300 + [1] * 300)
    p = np.clip(np.where(y == 1, 0.65, 0.35) + rng.normal(0, 0.15, y.size), 0, 1)
    plain = choose_threshold(y, p, min_sensitivity=0.9)
    strict = choose_threshold(y, p, min_sensitivity=0.9, confidence=0.95)
    sens = threshold_metrics(y, p, strict)["sensitivity"]
    assert strict < plain
    assert clopper_pearson(int(round(sens * 300)), 300, level=0.90)[0] >= 0.9
    # Too few positives to ever reach the bound: every validation positive is kept.
    y_small, p_small = np.array([0, 0, 1, 1, 1]), np.array([0.1, 0.5, 0.3, 0.6, 0.9])
    assert choose_threshold(y_small, p_small, confidence=0.95) == pytest.approx(0.3)


def test_intervals_widen_when_images_of_one_patient_are_resampled_together() -> None:
    # 30 patients with 6 near-identical images each: the image bootstrap believes it has 180
    # independent cases; resampling patients gives the honest, wider interval.
    rng = np.random.default_rng(4)
    patient_y = rng.integers(0, 2, 30)
    patient_p = np.clip(0.5 + (patient_y - 0.5) * 0.4 + rng.normal(0, 0.3, 30), 0, 1)
    y, p = np.repeat(patient_y, 6), np.repeat(patient_p, 6) + rng.normal(0, 1e-3, 180)
    groups = np.repeat(np.arange(30), 6).tolist()
    by_image = bootstrap_intervals(y, p, 0.5, n_boot=300)["auc"]
    by_patient = bootstrap_intervals(y, p, 0.5, n_boot=300, groups=groups)["auc"]
    assert by_patient[1] - by_patient[0] > 1.5 * (by_image[1] - by_image[0])
    assert evaluate_predictions(y, p, 0.5, n_boot=50, groups=groups)["n_groups"] == 30


def test_reliability_counts_cover_every_case_and_match_sklearn_bins() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 500)
    p = rng.uniform(0, 1, 500)
    curve = reliability_curve(y, p, bins=10)
    assert sum(curve["count"]) == 500
    assert len(curve["count"]) == len(curve["observed"]) == len(curve["mean_predicted"])


def test_baseline_operating_point_and_a_model_that_clearly_beats_it() -> None:
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 400)
    # A brightness shortcut the thumbnail model can half use; the "model" sees the truth.
    x = (rng.integers(0, 250, (400, 16, 16)) + 3 * y[:, None, None]).astype(np.uint8)
    base = thumbnail_baseline(
        x[:200], y[:200], x[300:], y[300:], n_boot=100, val_x=x[200:300], val_y=y[200:300], confidence=0.95
    )
    op = base["operating_point"]
    assert {"accuracy", "sensitivity", "specificity", "accuracy_ci95"} <= set(op)
    p_base = base["_p_test"]
    y_test = y[300:]
    good = np.clip(y_test * 0.8 + 0.1 + rng.normal(0, 0.05, 100), 0, 1)
    better = compare_at_operating_point(y_test, good, 0.5, p_base, op["threshold"], n_boot=200)
    assert better["beats_baseline"] and better["balanced_accuracy_difference"] > 0
    same = compare_at_operating_point(y_test, p_base, op["threshold"], p_base, op["threshold"], n_boot=200)
    assert not same["beats_baseline"] and same["accuracy_difference"] == 0
