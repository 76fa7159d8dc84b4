"""Probability calibration stored in the registry and applied by the ModelManager.

Convention (both methods): p_calibrated = sigmoid(a * logit(p_raw) + b).
- temperature scaling: a = 1 / T, b = 0 (one parameter, keeps the ranking and the 0.5 point)
- Platt scaling: a and b fitted by logistic regression on validation logits.
The operating threshold in the registry applies to the *calibrated* probability.
"""

from __future__ import annotations

from typing import Any

import numpy as np

EPS = 1e-7


def logit(p: np.ndarray | float) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(q) - np.log1p(-q)


def sigmoid(z: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def apply_calibration(p_raw: np.ndarray | float, calibration: dict[str, Any] | None) -> np.ndarray:
    """Raw model probabilities -> calibrated probabilities (same shape, float64)."""
    method = (calibration or {}).get("method", "none")
    if method == "none":
        return np.asarray(p_raw, dtype=np.float64)
    a = float(calibration["a"])  # type: ignore[index]
    b = float(calibration.get("b", 0.0))  # type: ignore[union-attr]
    return sigmoid(a * logit(p_raw) + b)
