"""A site's operating point: a validated model's threshold moved to another sensitivity target,
chosen on the model's validation ROC, with what to expect of it on the test split.

Numpy/scipy only (no TensorFlow), from a scores.json (core.training.split_scores):
- the threshold is the highest one whose VALIDATION sensitivity reaches the target
  (core.training.evaluation.choose_threshold, the rule the registry's own threshold follows);
- the expected figures are measured on the TEST split at that threshold: sensitivity,
  specificity and the flag rate (the share of test images called positive), each with its
  exact 95% Clopper-Pearson interval; the validation sensitivity and specificity are given too.

A target is refused (OperatingPointRefused, saying why) outside [MIN_TARGET, MAX_TARGET], or
when the validation split cannot reach it without flagging every validation image.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from core.errors import RadTriageError
from core.training.evaluation import choose_threshold, clopper_pearson, confusion
from core.training.split_scores import SplitScores

MIN_TARGET = 0.80
MAX_TARGET = 0.99
PRESET_TARGETS = (0.85, 0.90, 0.95, 0.97)


class OperatingPointRefused(RadTriageError):
    """No operating point was set; the message says why."""


@dataclass(frozen=True)
class Proportion:
    """k of n, with its exact 95% interval."""

    value: float
    k: int
    n: int
    ci95: tuple[float, float]

    @classmethod
    def of(cls, k: int, n: int) -> Proportion:
        return cls(value=k / n if n else math.nan, k=k, n=n, ci95=clopper_pearson(k, n))


@dataclass(frozen=True)
class SplitFigures:
    """Sensitivity, specificity and flag rate of one split at one threshold."""

    sensitivity: Proportion
    specificity: Proportion
    flag_rate: Proportion


@dataclass(frozen=True)
class OperatingPointPreview:
    target_sensitivity: float
    threshold: float
    val: SplitFigures
    test: SplitFigures

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: an undefined proportion (no positives in a split) is None."""
        return _json_safe(asdict(self))


def split_figures(split: SplitScores, threshold: float) -> SplitFigures:
    """Figures of `split` with positive = score >= threshold."""
    c = confusion(split.labels, split.scores, threshold)
    return SplitFigures(
        sensitivity=Proportion.of(c["tp"], c["tp"] + c["fn"]),
        specificity=Proportion.of(c["tn"], c["tn"] + c["fp"]),
        flag_rate=Proportion.of(c["tp"] + c["fp"], split.n),
    )


def target_check(target_sensitivity: float) -> float:
    """The target as a float, or OperatingPointRefused when it is not a number in the bounds."""
    try:
        target = float(target_sensitivity)
    except (TypeError, ValueError):
        raise OperatingPointRefused(
            f"The target sensitivity must be a number, not {target_sensitivity!r}."
        ) from None
    if not math.isfinite(target) or not MIN_TARGET <= target <= MAX_TARGET:
        raise OperatingPointRefused(
            f"A target sensitivity of {target:g} is outside the validated bounds: choose one "
            f"between {MIN_TARGET:.2f} and {MAX_TARGET:.2f}."
        )
    return target


def operating_point_preview(
    scores: dict[str, SplitScores], *, target_sensitivity: float
) -> OperatingPointPreview:
    """The threshold for `target_sensitivity` on the validation scores, and the figures to expect."""
    target = target_check(target_sensitivity)
    val, test = scores["val"], scores["test"]
    n_pos, n_neg = int(val.labels.sum()), int(val.n - val.labels.sum())
    if n_pos == 0 or n_neg == 0:
        raise OperatingPointRefused(
            "The validation split needs positive and negative images to choose a threshold on."
        )
    threshold = choose_threshold(val.labels, val.scores, min_sensitivity=target)
    at_val = split_figures(val, threshold)
    if at_val.specificity.k == 0:
        raise OperatingPointRefused(
            f"A sensitivity of {target:.2f} is not achievable on validation without flagging every "
            "validation image: choose a lower target."
        )
    if test.n == 0:
        raise OperatingPointRefused("The scores file has no test images to measure the threshold on.")
    return OperatingPointPreview(
        target_sensitivity=target,
        threshold=float(threshold),
        val=at_val,
        test=split_figures(test, threshold),
    )


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
