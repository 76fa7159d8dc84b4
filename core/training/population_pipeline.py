"""Fitting a registered model's population end to end: pooled features of its data splits (Keras),
the fit and choice on validation, pass rates on test, population.npz and the registry entry."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import RegistryError
from core.population import POPULATION_FILE, PopulationModel
from core.registry import sha256_file
from core.training.population_fit import DEFAULT_MARGIN, DEFAULT_PASS_RATE, select_population

log = logging.getLogger(__name__)

# One population per data set in ../shared/data (its README describes each).
POPULATIONS: dict[str, str] = {
    "pneumonia": "child_chest",
    "cardiomegaly": "adult_chest",
    "knee_osteoarthritis": "knee_crop_clahe",
    "knee_osteoporosis": "knee_film",
    "fracture": "limb",
}


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
    from core.training.data import load_arrays, load_samples

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
