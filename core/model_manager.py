"""ModelManager: resolves, loads, verifies, caches and runs the models named in registry.json.

- Lazy: nothing is loaded until the first request, so a Celery worker loads models after fork.
- Once per process: a bounded, thread-safe LRU cache; concurrent first requests load once.
- Verified: the artifact's sha256 must match the registry.
- Never crashes the pipeline (the seed paper's fallback): a missing, corrupt or mismatching
  artifact yields a placeholder CNN. Every result from it carries is_placeholder=True and the
  reason, and it is logged at ERROR level. Placeholders are retried after a while, so a fixed
  artifact is picked up without a restart.
- The registry file is re-read when it changes on disk, so switching the active model takes
  effect on the next job.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.applicability import Population
from core.calibration import apply_calibration
from core.conditions import get_condition
from core.errors import RadTriageError, RegistryError
from core.registry import ModelEntry, Registry, sha256_file

log = logging.getLogger(__name__)

PLACEHOLDER_RETRY_SECONDS = 60.0
# What a broken artifact raises while Keras reads it. Anything else (a job's time limit hit
# while loading, memory running out) is the job's problem, not the file's: it propagates for
# the job to retry, instead of answering from a placeholder that would then be cached.
ARTIFACT_ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    IndexError,
    EOFError,
    OSError,
    zipfile.BadZipFile,
    json.JSONDecodeError,
)


@dataclass
class LoadedModel:
    """A ready-to-run model plus everything a result must record about it."""

    model_id: str
    condition: str
    architecture: str
    input_size: tuple[int, int]
    threshold: float
    calibration: dict[str, Any]
    sha256: str | None  # of the artifact actually loaded; None for a placeholder
    is_placeholder: bool
    placeholder_reason: str | None
    experimental: bool
    experimental_reason: str | None
    gradcam_layer: str | None
    keras_model: Any
    entry: ModelEntry | None = None
    # The training population it declares, and the distance model of its training features
    # (core.population); None when the entry has none, or its file failed to load.
    population: Population | None = None
    population_model: Any = None
    # A model trained on joint crops reads full films through the joints it finds on them
    # (core.joint_crop); None for every other model, or when its template failed to load.
    joint_cropper: Any = None
    # Whether Grad-CAM subtracts the blank film's position pattern (core.gradcam); a registry
    # entry may turn it off where the pointing game measured it harmful (the boxed head).
    position_reference: bool = True
    loaded_at: float = field(default_factory=time.monotonic)
    # The artifact file and its (mtime_ns, size) when it was read (None: it was missing), so a
    # file deleted, replaced or restored under a running worker is noticed at the next job.
    artifact: Path | None = None
    artifact_stamp: tuple[int, int] | None = None
    _predict_fn: Any = None
    _gradcam: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """float32 (n, h, w, 3) in [0, 1] -> calibrated probabilities (n,)."""
        if self._predict_fn is None:
            with self._lock:
                if self._predict_fn is None:
                    self._predict_fn = _compile_predict(self.keras_model)
        raw = self._predict_fn(np.asarray(batch, dtype=np.float32)).numpy().reshape(-1)
        return apply_calibration(raw, self.calibration)

    def predict_with_gradcam(self, batch: np.ndarray) -> tuple[np.ndarray, Any]:
        """Calibrated probabilities (n,) and the GradCamResult, from one forward pass."""
        gradcam = self.gradcam()
        result = gradcam(batch)
        return apply_calibration(result.probabilities, self.calibration), result

    def gradcam(self) -> Any:
        if self._gradcam is None:
            with self._lock:
                if self._gradcam is None:
                    from core.gradcam import GradCam

                    self._gradcam = GradCam(
                        self.keras_model, layer=self.gradcam_layer, position_reference=self.position_reference
                    )
        return self._gradcam


def _compile_predict(model: Any) -> Any:
    # A compiled call: eager model(x) and model.predict are 10-17x slower at batch 1.
    import tensorflow as tf

    height, width, channels = model.input_shape[1:4]
    spec = tf.TensorSpec([None, height, width, channels], tf.float32)
    return tf.function(lambda x: model(x, training=False), input_signature=[spec], reduce_retracing=True)


class ModelManager:
    def __init__(self, registry_path: str | Path, *, cache_size: int = 4) -> None:
        self.registry_path = Path(registry_path)
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str | None], LoadedModel] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._key_locks: dict[tuple[str, str | None], threading.Lock] = {}
        self._registry: Registry | None = None
        self._registry_stamp: tuple[float, int] | None = None
        self.load_count = 0  # how many artifacts were actually loaded (for tests and benchmarks)

    # ------------------------------------------------------------------ registry
    def registry(self) -> Registry:
        try:
            stat = self.registry_path.stat()
            stamp = (stat.st_mtime, stat.st_size)
        except FileNotFoundError:
            raise RegistryError(f"Model registry not found: {self.registry_path}") from None
        if self._registry is None or stamp != self._registry_stamp:
            self._registry = Registry.load(self.registry_path)
            self._registry_stamp = stamp
        return self._registry

    # ------------------------------------------------------------------ resolution
    def get(self, *, condition: str | None = None, model_id: str | None = None) -> LoadedModel:
        """The model to run: `model_id` if given, else the active model for `condition`."""
        if model_id is None and condition is None:
            raise ValueError("give a condition or a model_id")
        registry = self.registry()
        if model_id is not None:
            entry: ModelEntry | None = registry.entry(model_id)
            assert entry is not None
            if condition is not None and entry.condition != condition:
                raise RegistryError(f"Model '{model_id}' is for {entry.condition}, not {condition}.")
        else:
            get_condition(condition)  # type: ignore[arg-type]  # unknown code -> clear error
            entry = registry.active_entry(condition)  # type: ignore[arg-type]
        key = (entry.id, entry.sha256) if entry else (f"placeholder:{condition}", None)
        cached = self._cached(key)
        if cached is not None:
            return cached
        with self._lock_for(key):
            cached = self._cached(key)
            if cached is not None:
                return cached
            loaded = self._load(registry, entry, condition or entry.condition)  # type: ignore[union-attr]
            self._store(key, loaded)
            return loaded

    def _cached(self, key: tuple[str, str | None]) -> LoadedModel | None:
        with self._cache_lock:
            loaded = self._cache.get(key)
            if loaded is None:
                return None
            if loaded.artifact is not None and artifact_stamp(loaded.artifact) != loaded.artifact_stamp:
                # Deleted or overwritten (the next load says so with a placeholder), or
                # restored after a placeholder: a stat per job, no restart needed.
                log.warning("Model artifact %s changed on disk; reloading %s", loaded.artifact, key[0])
                del self._cache[key]
                return None
            if (
                loaded.is_placeholder
                and loaded.entry is not None
                and time.monotonic() - loaded.loaded_at > PLACEHOLDER_RETRY_SECONDS
            ):
                del self._cache[key]  # the artifact may have been fixed: try again
                return None
            self._cache.move_to_end(key)
            return loaded

    def _store(self, key: tuple[str, str | None], loaded: LoadedModel) -> None:
        with self._cache_lock:
            self._cache[key] = loaded
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                evicted, _ = self._cache.popitem(last=False)
                log.info("Model cache full: evicted %s", evicted[0])

    def _lock_for(self, key: tuple[str, str | None]) -> threading.Lock:
        with self._cache_lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def cached_model_ids(self) -> list[str]:
        with self._cache_lock:
            return [k[0] for k in self._cache]

    # ------------------------------------------------------------------ loading
    def _load(self, registry: Registry, entry: ModelEntry | None, condition: str) -> LoadedModel:
        if entry is None:
            return self._placeholder(condition, None, f"No active model is registered for {condition}.")
        path = registry.artifact_path(entry)
        stamp = artifact_stamp(path)  # before reading: a change during the load is seen next time
        loaded = self._load_artifact(registry, entry, condition, path)
        loaded.artifact, loaded.artifact_stamp = path, stamp
        return loaded

    def _load_artifact(
        self, registry: Registry, entry: ModelEntry, condition: str, path: Path
    ) -> LoadedModel:
        if not path.is_file():
            return self._placeholder(condition, entry, f"Model artifact missing: {path}.")
        actual = sha256_file(path)
        if entry.sha256 and actual != entry.sha256:
            return self._placeholder(
                condition,
                entry,
                f"Model artifact {path} fails its checksum (registry {entry.sha256[:12]}..., "
                f"file {actual[:12]}...): it was changed or corrupted.",
            )
        if not entry.sha256:
            log.warning("Registry entry %s has no sha256; loading %s unverified", entry.id, path)
        try:
            import keras

            model = keras.models.load_model(path, compile=False)
        except ARTIFACT_ERRORS as exc:  # the file cannot be deserialised: do not trust it
            interruption = _interruption(exc)
            if interruption is not None:
                raise interruption from None
            return self._placeholder(condition, entry, f"Model artifact {path} could not be loaded ({exc}).")
        self.load_count += 1
        log.info("Loaded model %s (%s) from %s", entry.id, actual[:12], path)
        return LoadedModel(
            model_id=entry.id,
            condition=entry.condition,
            architecture=entry.architecture,
            input_size=entry.input_size,
            threshold=entry.threshold,
            calibration=entry.calibration,
            sha256=actual,
            is_placeholder=False,
            placeholder_reason=None,
            experimental=entry.is_experimental,
            experimental_reason=entry.experimental_reason,
            gradcam_layer=entry.gradcam_layer,
            keras_model=model,
            entry=entry,
            population=Population.from_entry(entry.raw),
            population_model=_population_model(registry, entry),
            joint_cropper=_joint_cropper(registry, entry),
            position_reference=bool(entry.raw.get("gradcam_position_reference", True)),
        )

    def _placeholder(self, condition: str, entry: ModelEntry | None, reason: str) -> LoadedModel:
        from core.architectures import ARCHITECTURES, build_placeholder

        size = entry.input_size if entry else ARCHITECTURES["placeholder"]["input_size"]
        log.error(
            "PLACEHOLDER MODEL IN USE for %s: %s Results have NO diagnostic value.",
            condition,
            reason,
        )
        return LoadedModel(
            model_id=f"placeholder:{condition}",
            condition=condition,
            architecture="placeholder",
            input_size=tuple(size),
            threshold=0.5,
            calibration={"method": "none"},
            sha256=None,
            is_placeholder=True,
            placeholder_reason=reason,
            experimental=False,
            experimental_reason=None,
            gradcam_layer=None,
            keras_model=build_placeholder(input_size=size),
            entry=entry,
        )


def artifact_stamp(path: Path) -> tuple[int, int] | None:
    """(mtime_ns, size) of a model file, None if it is missing."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size)


def _interruption(exc: BaseException) -> BaseException | None:
    """The job's own interruption (a time limit...) that Keras wrapped while loading, if any:
    Keras re-raises errors met during deserialisation as ValueError/TypeError."""
    seen: BaseException | None = exc
    while seen is not None:
        if not isinstance(seen, ARTIFACT_ERRORS):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _population_model(registry: Registry, entry: ModelEntry) -> Any:
    """The entry's feature-distance model, or None: then results say the feature check was
    unavailable (a broken file must not stop the model; it is logged)."""
    from core.population import load_population

    try:
        return load_population(registry, entry)
    except RadTriageError as exc:
        log.error("Population model for %s could not be loaded: %s", entry.id, exc)
        return None


def _joint_cropper(registry: Registry, entry: ModelEntry) -> Any:
    """The entry's joint cropper (its "joint_crop" object), or None. A broken template is
    logged and leaves full films unread (turned away as outside the population), never wrong."""
    from core.joint_crop import JointCropper

    spec = entry.raw.get("joint_crop")
    if not spec:
        return None
    try:
        return JointCropper.from_entry(registry.artifact_path(entry).parent, spec)
    except (RadTriageError, OSError, ValueError) as exc:
        log.error("Joint crop template for %s could not be loaded: %s", entry.id, exc)
        return None


_managers: dict[Path, ModelManager] = {}
_managers_lock = threading.Lock()


def get_manager(registry_path: str | Path, *, cache_size: int = 4) -> ModelManager:
    """The per-process ModelManager for a registry (created on first use, i.e. after fork)."""
    path = Path(registry_path).resolve()
    with _managers_lock:
        if path not in _managers:
            _managers[path] = ModelManager(path, cache_size=cache_size)
        return _managers[path]
