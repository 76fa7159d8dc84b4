"""Fitting a population model (core.population) from pooled features: TRAIN features give the
geometry, VALIDATION features the cut-off and the choice of k and method. numpy (+ scikit-learn
for Ledoit-Wolf), no TensorFlow."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from core.population import (
    METHOD_LEDOIT_WOLF,
    METHOD_PCA,
    METHOD_PCA_RESIDUAL,
    METHOD_PPCA,
    METHODS,
    PopulationModel,
)

DEFAULT_PASS_RATE = 0.97
DEFAULT_MARGIN = 0.015  # cut-off at the 98.5th validation percentile: room for val/test drift


def _as_features(features: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"{name} features must be (n >= 2, d), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} features contain NaN or infinity")
    return x


def default_k(n_train: int, dim: int) -> int:
    """64 axes, fewer when there are few training images (a covariance needs ~4 images/axis)."""
    return max(1, min(64, n_train // 4, dim))


@dataclass(frozen=True, eq=False)
class TrainPCA:
    """Principal axes of the TRAIN features, computed once and sliced for every k tried."""

    mean: np.ndarray  # (d,)
    axes: np.ndarray  # (d, r) orthonormal, by decreasing variance
    variances: np.ndarray  # (r,)
    total2: np.ndarray  # (n,) squared norm of each centred train vector
    scores: np.ndarray  # (n, r) train coordinates on the axes

    @classmethod
    def fit(cls, train_features: np.ndarray) -> TrainPCA:
        x = _as_features(train_features, "train")
        mean = x.mean(axis=0)
        centred = x - mean
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        return cls(
            mean=mean,
            axes=vt.T.copy(),
            variances=singular**2 / (len(x) - 1),
            total2=(centred**2).sum(axis=1),
            scores=centred @ vt.T,
        )


def fit_geometry(
    train_features: np.ndarray | TrainPCA, *, method: str = METHOD_PPCA, k: int | None = None
) -> PopulationModel:
    """Mean, axes and scales from TRAIN features only; cut-off left at 1 (set by `with_cutoff`)."""
    if method == METHOD_LEDOIT_WOLF:
        if isinstance(train_features, TrainPCA):
            raise ValueError("Ledoit-Wolf needs the train features themselves")
        return _fit_ledoit_wolf(_as_features(train_features, "train"))
    if method not in METHODS:
        raise ValueError(f"unknown population method {method!r} (known: {', '.join(METHODS)})")
    pca = train_features if isinstance(train_features, TrainPCA) else TrainPCA.fit(train_features)
    n, d = len(pca.total2), len(pca.mean)
    k = default_k(n, d) if k is None else int(k)
    if not 1 <= k <= min(n - 1, d):
        raise ValueError(f"k={k} principal axes impossible with {n} train images of dim {d}")
    variances = pca.variances[:k]
    # A floor at a small fraction of the top variance keeps whitening stable if an axis is flat.
    scales = np.sqrt(np.maximum(variances, variances[0] * 1e-6 + 1e-12))
    residual2 = np.maximum(pca.total2 - (pca.scores[:, :k] ** 2).sum(axis=1), 0.0)
    weight = {METHOD_PCA: 0.0, METHOD_PCA_RESIDUAL: 1.0, METHOD_PPCA: (d - k) / k}[method]
    return PopulationModel(
        mean=pca.mean,
        projection=_float32_exact(pca.axes[:, :k]),
        scales=scales,
        cutoff=1.0,
        residual_weight=float(weight),
        residual_scale2=float(max(residual2.mean(), 1e-12)),
        method=method,
    )


def _float32_exact(projection: np.ndarray) -> np.ndarray:
    """Axes rounded to float32 (half the file; a d x d Ledoit-Wolf basis is 6.5 MB instead of 13)
    before the cut-off is computed, so the saved file reproduces the fitted distances exactly."""
    return projection.astype(np.float32).astype(np.float64)


def _fit_ledoit_wolf(x: np.ndarray) -> PopulationModel:
    from sklearn.covariance import LedoitWolf

    mean = x.mean(axis=0)
    covariance = LedoitWolf(assume_centered=True).fit(x - mean).covariance_
    eigenvalues, axes = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    return PopulationModel(
        mean=mean,
        projection=_float32_exact(axes[:, order]),
        scales=np.sqrt(np.maximum(eigenvalues[order], 1e-12)),
        cutoff=1.0,
        method=METHOD_LEDOIT_WOLF,
    )


def with_cutoff(
    geometry: PopulationModel,
    val_features: np.ndarray,
    *,
    pass_rate: float = DEFAULT_PASS_RATE,
    margin: float = DEFAULT_MARGIN,
) -> PopulationModel:
    """Cut-off = the (pass_rate + margin) quantile of VALIDATION distances, rounded up to an
    observed distance, so at least that fraction of in-population validation images pass."""
    if not 0.0 < pass_rate <= 1.0 or margin < 0:
        raise ValueError(f"pass_rate must be in (0, 1] and margin >= 0, got {pass_rate}, {margin}")
    distances = geometry.distance(_as_features(val_features, "validation"))
    q = min(1.0, pass_rate + margin)
    cutoff = float(np.quantile(distances, q, method="higher"))
    return replace(geometry, cutoff=max(cutoff, 1e-9))


def fit_population(
    train_features: np.ndarray | TrainPCA,
    val_features: np.ndarray,
    *,
    pass_rate: float = DEFAULT_PASS_RATE,
    margin: float = DEFAULT_MARGIN,
    method: str = METHOD_PPCA,
    k: int | None = None,
    feature_layer: str = "",
) -> PopulationModel:
    """Geometry from TRAIN features (n, d), cut-off from VALIDATION features (m, d)."""
    geometry = fit_geometry(train_features, method=method, k=k)
    model = with_cutoff(geometry, val_features, pass_rate=pass_rate, margin=margin)
    return replace(model, feature_layer=feature_layer)


@dataclass(frozen=True)
class Candidate:
    method: str
    k: int | None


def candidate_grid(n_train: int, dim: int, *, ledoit_wolf: bool = False) -> list[Candidate]:
    """The settings tried on validation: PCA k in 16..128 with no, equal or per-dimension
    (probabilistic PCA) weight on the residual; optionally Ledoit-Wolf on the full space.

    Ledoit-Wolf is off by default: its d x d basis (13 MB in float64 at d = 1280) makes each
    distance memory-bound, 3-6 ms per image on the shared CPU against ~0.2 ms for k = 128, i.e.
    ~10% of a 224 px MobileNetV2 forward pass, where the PCA variants separate as well."""
    ks = sorted({k for k in (16, 32, 64, 128) if k <= min(n_train // 4, dim)} or {default_k(n_train, dim)})
    grid = [Candidate(m, k) for k in ks for m in (METHOD_PCA, METHOD_PCA_RESIDUAL, METHOD_PPCA)]
    if ledoit_wolf and n_train >= 32:
        grid.append(Candidate(METHOD_LEDOIT_WOLF, None))
    return grid


def select_population(
    train_features: np.ndarray,
    val_features: np.ndarray,
    other_val_features: Mapping[str, np.ndarray],
    *,
    pass_rate: float = DEFAULT_PASS_RATE,
    margin: float = DEFAULT_MARGIN,
    candidates: Sequence[Candidate] | None = None,
    feature_layer: str = "",
) -> tuple[PopulationModel, list[dict[str, Any]]]:
    """Try each candidate (fit on train, cut-off on val) and keep the one that lets through the
    fewest other-population VALIDATION images (mean over populations; ties: earlier, simpler
    candidate). Returns the model and one row per candidate for the report."""
    if not other_val_features and candidates is None:  # nothing to compare with: the default
        model = fit_population(
            train_features, val_features, pass_rate=pass_rate, margin=margin, feature_layer=feature_layer
        )
        return model, []
    candidates = list(candidates or candidate_grid(len(train_features), train_features.shape[1]))
    pca = TrainPCA.fit(train_features)
    rows: list[dict[str, Any]] = []
    best: tuple[tuple[float, int], PopulationModel] | None = None
    for rank, cand in enumerate(candidates):
        source = train_features if cand.method == METHOD_LEDOIT_WOLF else pca
        model = fit_population(
            source,
            val_features,
            pass_rate=pass_rate,
            margin=margin,
            method=cand.method,
            k=cand.k,
            feature_layer=feature_layer,
        )
        others = {name: float(model.within(f).mean()) for name, f in other_val_features.items()}
        score = float(np.mean(list(others.values()))) if others else 0.0
        rows.append(
            {
                "method": cand.method,
                "k": model.k,
                "cutoff": model.cutoff,
                "val_pass_rate": float(model.within(val_features).mean()),
                "other_val_pass_rates": others,
                "score": score,
            }
        )
        key = (round(score, 6), rank)
        if best is None or key < best[0]:
            best = (key, model)
    assert best is not None
    return best[1], rows
