"""Is this image from the population the model was trained on? A feature-space distance.

Each model learned one population (children's chests, adults' chests, CLAHE knee-joint crops,
knee films, limbs) and still answers "yes" or "no" for images from any other one. This module
measures how far an image's own backbone features lie from the model's training features, so
the serving path can say "outside this model's population" instead of a confident prediction.

Feature contract (serving and fitting must agree, bit for bit in float32):
    the feature vector of an image is the OUTPUT of the model's GlobalAveragePooling2D layer that
    feeds the head's BatchNormalization (`find_pooling_layer`, "gap" in RadTriage's models),
    shape (d,): 1280 for MobileNetV2, 1024 for DenseNet121, computed with training=False on the
    image preprocessed exactly as served: `core.preprocessing.preprocess_gray(xray.pixels,
    input_size=entry.input_size)` (float32 RGB in [0, 1]; the model's own Rescaling/Normalization
    layers follow). Grad-CAM's forward pass exposes the same tensor as `GradCamResult.pooled`;
    `pooled_features` computes it here for fitting. It is taken BEFORE the head BatchNorm, so the
    head's learned affine transform does not enter the distance.

Distance (numpy only at serving: one (d, k) projection and two norms per image):
    y = (x - mean) @ P                       P: (d, k) top-k principal axes of the TRAIN features
    a = sum((y / scales) ** 2) / k           whitened Mahalanobis in the PCA subspace, per axis
    b = (|x - mean|^2 - |y|^2) / r2_train    energy off the subspace (reconstruction residual)
                                              relative to its mean on the train features
    distance = sqrt((a + w * b) / (1 + w))   about 1 for a typical training image
Methods: w = 0 "pca_mahalanobis" (PCA-whitened Mahalanobis); w = 1 "pca_mahalanobis+residual"
(subspace and residual weighted equally); w = (d - k) / k "ppca_mahalanobis" (every dimension
weighted equally: the Mahalanobis distance under probabilistic PCA, whose covariance is the top-k
axes plus isotropic noise); "ledoit_wolf": w = 0 with P the eigenvectors of sklearn's shrunk
covariance and k = d. The cut-off is a high percentile of the
VALIDATION distances (pass_rate + margin), so at least `pass_rate` of in-population validation
images pass; k and w are chosen on validation too (other populations' validation images are the
negatives), never on test.

Artifact: `models/<model-id>/population.npz`, read with allow_pickle=False, its sha256 kept in
the registry entry's "applicability" object.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import RegistryError
from core.registry import sha256_file

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
METHOD_PCA = "pca_mahalanobis"
METHOD_PCA_RESIDUAL = "pca_mahalanobis+residual"
METHOD_PPCA = "ppca_mahalanobis"
METHOD_LEDOIT_WOLF = "ledoit_wolf"
METHODS = (METHOD_PCA, METHOD_PCA_RESIDUAL, METHOD_PPCA, METHOD_LEDOIT_WOLF)
DEFAULT_PASS_RATE = 0.97
DEFAULT_MARGIN = 0.015  # cut-off at the 98.5th validation percentile: room for val/test drift
POPULATION_FILE = "population.npz"

# One population per data set in ../shared/data (its README describes each).
POPULATIONS: dict[str, str] = {
    "pneumonia": "child_chest",
    "cardiomegaly": "adult_chest",
    "knee_osteoarthritis": "knee_crop_clahe",
    "knee_osteoporosis": "knee_film",
    "fracture": "limb",
}

_ARRAY_FIELDS = ("mean", "projection", "scales")
_SCALAR_FIELDS = ("cutoff", "residual_weight", "residual_scale2", "format_version")


# ----------------------------------------------------------------------------- serving model


@dataclass(frozen=True, eq=False)
class PopulationModel:
    """A fitted population: `distance` (n, d) -> (n,), `within` -> bool (n,). numpy only."""

    mean: np.ndarray  # float64 (d,)
    projection: np.ndarray  # float64 (d, k), orthonormal columns
    scales: np.ndarray  # float64 (k,), standard deviation of the TRAIN features along each axis
    cutoff: float
    residual_weight: float = 0.0
    residual_scale2: float = 1.0  # mean squared residual of the TRAIN features
    method: str = METHOD_PCA
    feature_layer: str = ""

    def __post_init__(self) -> None:
        d, k = self.projection.shape
        if self.mean.shape != (d,) or self.scales.shape != (k,):
            raise ValueError(
                f"inconsistent population arrays: mean {self.mean.shape}, "
                f"projection {self.projection.shape}, scales {self.scales.shape}"
            )
        if not (np.all(np.isfinite(self.scales)) and np.all(self.scales > 0)):
            raise ValueError("population scales must be finite and positive")
        if not (np.isfinite(self.cutoff) and self.cutoff > 0 and self.residual_scale2 > 0):
            raise ValueError("population cut-off and residual scale must be positive")

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def k(self) -> int:
        return int(self.projection.shape[1])

    def distance(self, pooled: np.ndarray) -> np.ndarray:
        """float (n, d) or (d,) pooled features -> float64 (n,) distances (~1 in population)."""
        x = np.asarray(pooled, dtype=np.float64)
        x = x.reshape(1, -1) if x.ndim == 1 else x
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"expected pooled features of shape (n, {self.dim}), got "
                f"{np.shape(pooled)}: a different model's features?"
            )
        centred = x - self.mean
        y = centred @ self.projection
        a = np.einsum("ij,ij->i", y / self.scales, y / self.scales) / self.k
        if self.residual_weight <= 0:
            return np.sqrt(a)
        residual2 = np.maximum(np.einsum("ij,ij->i", centred, centred) - np.einsum("ij,ij->i", y, y), 0.0)
        b = residual2 / self.residual_scale2
        return np.sqrt((a + self.residual_weight * b) / (1.0 + self.residual_weight))

    def within(self, pooled: np.ndarray) -> np.ndarray:
        """bool (n,): True where the image lies inside the model's training population."""
        return self.distance(pooled) <= self.cutoff

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> str:
        """Write the .npz (no pickled objects) and return its sha256."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez(
            tmp,
            mean=self.mean,
            projection=self.projection.astype(np.float32),
            scales=self.scales,
            cutoff=np.float64(self.cutoff),
            residual_weight=np.float64(self.residual_weight),
            residual_scale2=np.float64(self.residual_scale2),
            format_version=np.int64(FORMAT_VERSION),
            method=np.array(self.method),
            feature_layer=np.array(self.feature_layer),
        )
        tmp.replace(path)  # atomic: a reader never sees half a file
        return sha256_file(path)

    @classmethod
    def load(cls, path: str | Path, *, sha256: str | None = None) -> PopulationModel:
        """Read a population.npz; RegistryError (a complete sentence) if it is missing, fails
        its checksum, or is not a valid population file."""
        path = Path(path)
        if not path.is_file():
            raise RegistryError(
                f"Population file not found: {path}. Run `manage.py "
                f"fit_population --model <id>` to create it."
            )
        if sha256 is not None:
            actual = sha256_file(path)
            if actual != sha256:
                raise RegistryError(
                    f"Population file {path} fails its checksum (registry {sha256[:12]}..., "
                    f"file {actual[:12]}...): it was changed or corrupted."
                )
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [f for f in (*_ARRAY_FIELDS, *_SCALAR_FIELDS, "method") if f not in z]
                if missing:
                    raise ValueError(f"missing field(s) {', '.join(missing)}")
                version = int(z["format_version"])
                if version != FORMAT_VERSION:
                    raise ValueError(f"format version {version}, expected {FORMAT_VERSION}")
                return cls(
                    mean=np.asarray(z["mean"], np.float64),
                    projection=np.asarray(z["projection"], np.float64),
                    scales=np.asarray(z["scales"], np.float64),
                    cutoff=float(z["cutoff"]),
                    residual_weight=float(z["residual_weight"]),
                    residual_scale2=float(z["residual_scale2"]),
                    method=str(z["method"]),
                    feature_layer=str(z["feature_layer"]) if "feature_layer" in z else "",
                )
        except RegistryError:
            raise
        except Exception as exc:  # zip/npy damage, wrong dtypes, inconsistent shapes: untrusted
            raise RegistryError(f"Population file {path} is not a valid population model ({exc}).") from None


def load_population(registry: Any, entry: Any) -> PopulationModel | None:
    """The population of a registry entry (core.registry Registry, ModelEntry), checksum
    verified; None when the entry has no "applicability" yet. RegistryError if its file is
    missing, corrupt or changed."""
    applicability = entry.raw.get("applicability")
    if not applicability:
        return None
    folder = registry.artifact_path(entry).parent
    return PopulationModel.load(
        folder / applicability.get("file", POPULATION_FILE), sha256=applicability.get("sha256")
    )


# ----------------------------------------------------------------------------- fitting


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


# ----------------------------------------------------------------------------- features (Keras)


def find_pooling_layer(model: Any) -> str:
    """Name of the GlobalAveragePooling2D layer whose output feeds the head (its BatchNorm, or
    the first Dense when there is none). Searched at the top level, where RadTriage's head is."""
    import keras

    pools = [layer for layer in model.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D)]
    if not pools:
        raise ValueError(
            f"Model '{model.name}' has no GlobalAveragePooling2D layer: cannot "
            f"take the pooled features its head sees."
        )
    for pool in reversed(pools):
        for node in getattr(pool, "_outbound_nodes", []) or []:
            consumer = getattr(node, "operation", None)
            if isinstance(consumer, keras.layers.BatchNormalization | keras.layers.Dense):
                return str(pool.name)
    return str(pools[-1].name)


def pooled_feature_model(model: Any, layer: str | None = None) -> Any:
    """A functional model sharing `model`'s layers and weights: input -> GAP output (n, d).
    `model` itself is not modified."""
    import keras

    name = layer or find_pooling_layer(model)
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, model.get_layer(name).output, name=f"{model.name}_pooled")


def pooled_feature_fn(model: Any, layer: str | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Compiled float32 (n, h, w, 3) -> float32 (n, d) (tf.function: ~5x faster than eager on
    CPU; equal to the eager result up to float32 rounding, ~1e-5)."""
    import tensorflow as tf

    feature_model = pooled_feature_model(model, layer)
    height, width, channels = (int(v) for v in feature_model.input_shape[1:4])
    spec = tf.TensorSpec([None, height, width, channels], tf.float32)
    compiled = tf.function(
        lambda images: feature_model(images, training=False),
        input_signature=[spec],
        reduce_retracing=True,
        autograph=False,
    )

    def run(batch: np.ndarray) -> np.ndarray:
        return np.asarray(compiled(np.asarray(batch, dtype=np.float32)), dtype=np.float32)

    run.dim = int(feature_model.output.shape[-1])  # type: ignore[attr-defined]
    return run


def pooled_features(
    model: Any,
    batch: np.ndarray,
    *,
    layer: str | None = None,
    batch_size: int = 64,
    feature_fn: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """float32 (n, h, w, 3) preprocessed images -> float32 (n, d) pooled features (the feature
    contract above). Pass `feature_fn` (from `pooled_feature_fn`) to compile only once."""
    fn = feature_fn if feature_fn is not None else pooled_feature_fn(model, layer)
    out = [fn(batch[i : i + batch_size]) for i in range(0, len(batch), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, fn.dim), np.float32)  # type: ignore


def _gray_features(
    feature_fn: Callable[[np.ndarray], np.ndarray], gray: np.ndarray, *, batch_size: int = 64
) -> np.ndarray:
    """uint8 (n, h, w) -> pooled features, converting batch by batch (bounded memory)."""
    from core.preprocessing import to_model_input

    out = [feature_fn(to_model_input(gray[i : i + batch_size])) for i in range(0, len(gray), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, feature_fn.dim), np.float32)  # type: ignore


# ----------------------------------------------------------------------------- offline pipeline


def _pick(items: list[Any], n: int | None, seed: int) -> list[Any]:
    if n is None or len(items) <= n:
        return items
    idx = np.sort(np.random.default_rng(seed).choice(len(items), size=n, replace=False))
    return [items[i] for i in idx]


def _split_features(
    feature_fn: Callable[[np.ndarray], np.ndarray],
    data_root: Path,
    condition: str,
    split: str,
    *,
    input_size: Sequence[int],
    cache_dir: Path | None,
    limit: int | None,
    seed: int,
    model_sha: str,
) -> np.ndarray:
    """Pooled features of one data split (a seeded subset when `limit`), cached per model
    artifact and file list so re-running with another method does not re-run the network."""
    from core.data import load_arrays, load_samples

    samples = _pick(load_samples(data_root / condition, splits=[split]), limit, seed)
    cache_file = None
    if cache_dir is not None:
        key = hashlib.sha256("\n".join([model_sha, *(str(s.path) for s in samples)]).encode()).hexdigest()[
            :20
        ]
        cache_file = cache_dir / f"pooled-{key}.npy"
        if cache_file.is_file():
            return np.load(cache_file, allow_pickle=False)
    gray = load_arrays(samples, input_size=input_size, cache_dir=cache_dir).x
    features = _gray_features(feature_fn, gray)
    if cache_file is not None:
        tmp = cache_file.with_name(f".{cache_file.name}.tmp.npy")
        np.save(tmp, features)
        tmp.replace(cache_file)
    return features


def fit_population_for_model(
    model_id: str,
    registry_path: str | Path,
    data_root: str | Path,
    *,
    max_train: int | None = 3000,
    max_other_val: int | None = 300,
    max_other_test: int | None = None,
    pass_rate: float = DEFAULT_PASS_RATE,
    margin: float = DEFAULT_MARGIN,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    write: bool = True,
    progress: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """Fit a model's population on its TRAIN split, choose k/method and the cut-off on VAL,
    report pass rates on TEST (own and every other population's); write
    models/<id>/population.npz and the registry entry's "applicability" unless write=False."""
    import keras

    from core.registry import Registry

    registry_path = Path(registry_path)
    data_root = Path(data_root)
    cache = Path(cache_dir) if cache_dir is not None else None
    registry = Registry.load(registry_path)
    entry = registry.entry(model_id)
    artifact = registry.artifact_path(entry)
    if entry.sha256 and sha256_file(artifact) != entry.sha256:
        raise RegistryError(
            f"Model artifact {artifact} fails its checksum: refusing to fit a "
            f"population for a model that is not the registered one."
        )
    model = keras.models.load_model(artifact, compile=False)
    layer = find_pooling_layer(model)
    feature_fn = pooled_feature_fn(model, layer)
    size = entry.input_size

    model_sha = entry.sha256 or sha256_file(artifact)

    def features(condition: str, split: str, limit: int | None) -> np.ndarray:
        started = time.perf_counter()
        f = _split_features(
            feature_fn,
            data_root,
            condition,
            split,
            input_size=size,
            cache_dir=cache,
            limit=limit,
            seed=seed,
            model_sha=model_sha,
        )
        progress(f"{model_id}: {condition}/{split}: {len(f)} images, {time.perf_counter() - started:.1f} s")
        return f

    own = entry.condition
    train = features(own, "train", max_train)
    val = features(own, "val", None)
    test = features(own, "test", None)
    others = [c for c in POPULATIONS if c != own and (data_root / c).is_dir()]
    other_val = {POPULATIONS[c]: features(c, "val", max_other_val) for c in others}
    other_test = {POPULATIONS[c]: features(c, "test", max_other_test) for c in others}

    with _one_blas_thread():  # 2 shared cores: oversubscribed BLAS threads crawl
        population, grid = select_population(
            train, val, other_val, pass_rate=pass_rate, margin=margin, feature_layer=layer
        )
    seconds_per_image, model_seconds = _timings(population, model, size)
    applicability = {
        "file": POPULATION_FILE,
        "sha256": None,
        "feature_layer": layer,
        "feature_dim": population.dim,
        "method": population.method,
        "k": population.k,
        "population": POPULATIONS.get(own, own),
        "cutoff": round(population.cutoff, 6),
        "pass_rate_target": pass_rate,
        "cutoff_quantile": min(1.0, pass_rate + margin),
        "val_pass_rate": round(float(population.within(val).mean()), 4),
        "test_pass_rate": round(float(population.within(test).mean()), 4),
        "other_populations": {
            name: round(float(population.within(f).mean()), 4) for name, f in other_test.items()
        },
        "n": {
            "train": len(train),
            "val": len(val),
            "test": len(test),
            **{f"{name}_test": len(f) for name, f in other_test.items()},
        },
        "fitted_on": "train",
        "cutoff_chosen_on": "val",
        "method_chosen_on": "val (other populations' validation images as negatives)",
        "reported_on": "test",
        "seconds_per_image": seconds_per_image,
        "model_seconds_per_image": model_seconds,
    }
    if write:
        path = artifact.parent / POPULATION_FILE
        applicability["sha256"] = population.save(path)
        _record(registry_path, model_id, applicability)
    return {"model_id": model_id, "applicability": applicability, "candidates": grid}


def _one_blas_thread() -> Any:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: only speed is at stake
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


def _timings(population: PopulationModel, model: Any, size: Sequence[int]) -> tuple[float, float]:
    """Per-image seconds of the distance (batch of 1, as served) and of the model's own forward
    pass (batch of 16), for the "well under 10% of the model" check."""
    rng = np.random.default_rng(0)
    one = rng.normal(size=(1, population.dim)).astype(np.float32)
    repeats = 500
    started = time.perf_counter()
    for _ in range(repeats):
        population.within(one)
    distance_s = (time.perf_counter() - started) / repeats
    import tensorflow as tf

    forward = tf.function(
        lambda images: model(images, training=False),  # compiled, as served
        autograph=False,
    )
    batch = rng.random((16, *size, 3), dtype=np.float32)
    forward(batch)  # warm-up: graph tracing is not per-image cost
    started = time.perf_counter()
    for _ in range(3):
        forward(batch)
    model_s = (time.perf_counter() - started) / (3 * len(batch))
    return float(f"{distance_s:.3g}"), float(f"{model_s:.3g}")


def _record(registry_path: Path, model_id: str, applicability: dict[str, Any]) -> None:
    """Re-read the registry just before writing (others may have changed it meanwhile) and
    update only this entry's "applicability"."""
    from core.registry import Registry

    registry = Registry.load(registry_path)
    entry = registry.entry(model_id)
    registry.models[model_id] = type(entry)({**entry.raw, "applicability": applicability})
    registry.save()


def format_table(reports: Sequence[Mapping[str, Any]]) -> str:
    """One row per model: own val/test pass rates and each other population's test pass rate."""
    names = list(POPULATIONS.values())
    header = f"{'model':42s} {'method':26s} {'k':>4s} {'val':>6s} {'test':>6s} " + " ".join(
        f"{n[:12]:>12s}" for n in names
    )
    lines = [header, "-" * len(header)]
    for report in reports:
        a = report["applicability"]
        cells = []
        for n in names:
            if n == a["population"]:
                cells.append(f"{'(own)':>12s}")
            else:
                v = a["other_populations"].get(n)
                cells.append(f"{v:12.3f}" if v is not None else f"{'-':>12s}")
        lines.append(
            f"{report['model_id']:42s} {a['method']:26s} {a['k']:4d} "
            f"{a['val_pass_rate']:6.3f} {a['test_pass_rate']:6.3f} " + " ".join(cells)
        )
    return "\n".join(lines)
