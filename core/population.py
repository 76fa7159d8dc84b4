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
    `core.training.population_pipeline.pooled_features` computes it for fitting. It is taken
    BEFORE the head BatchNorm, so the head's learned affine transform does not enter the distance.

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
the registry entry's "applicability" object. This module is what serving needs (the model, its
file, its distance); fitting is offline: core.training.population_fit (the numpy fit and the
choice of k and method) and core.training.population_pipeline (features, the command's run).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import RegistryError
from core.registry import sha256_file

FORMAT_VERSION = 1
METHOD_PCA = "pca_mahalanobis"
METHOD_PCA_RESIDUAL = "pca_mahalanobis+residual"
METHOD_PPCA = "ppca_mahalanobis"
METHOD_LEDOIT_WOLF = "ledoit_wolf"
METHODS = (METHOD_PCA, METHOD_PCA_RESIDUAL, METHOD_PPCA, METHOD_LEDOIT_WOLF)
POPULATION_FILE = "population.npz"


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
