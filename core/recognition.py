"""Which body region and which training population an X-ray looks like (numpy + OpenCV only).

RadTriage's models each learned one population (children's chests, adults' chests, CLAHE knee
joint crops, full knee films, limb films). Before a model's output is shown, the applicability
check asks this recogniser what the image looks like. It runs in the Django web process, so it
never imports TensorFlow and never unpickles: the weights are plain arrays in an .npz file
(written by core.training.recogniser) and the forward pass is a few numpy matrix products.

Features (computed from a 128x128 area-resized thumbnail, whatever the input's size):
a per-image standardised 32x32 thumbnail, a 16x16 gradient-magnitude map, a 16-bin intensity
histogram and nine appearance statistics (exposure, contrast, edge level, aspect ratio,
neighbour correlation at two scales, grey-level entropy, black and white fractions). A small
MLP gives the class probabilities; a Mahalanobis distance of the appearance statistics to the
nearest class says whether the image looks like a radiograph at all, so noise, a blank frame or
a test pattern comes out "unrecognised" instead of confidently one class. It cannot reliably
reject a photograph or a cross-sectional (CT/MRI) slice: see the model card.
"""

from __future__ import annotations

import threading
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from core.errors import RadTriageError

FEATURE_VERSION = 2
THUMB_SIZE = 128
CLASSES: tuple[str, ...] = ("chest_child", "chest_adult", "knee_crop", "knee_film", "limb")
REGION_OF: dict[str, str] = {
    "chest_child": "chest",
    "chest_adult": "chest",
    "knee_crop": "knee",
    "knee_film": "knee",
    "limb": "limb",
}
REGIONS: tuple[str, ...] = ("chest", "knee", "limb")
UNRECOGNISED = "unrecognised"
AGE_GROUP_OF: dict[str, str] = {"chest_child": "children", "chest_adult": "adults"}
DESCRIPTION_OF: dict[str, str] = {
    "chest_child": "children's chest film",
    "chest_adult": "adult chest film",
    "knee_crop": "knee joint crop (CLAHE)",
    "knee_film": "full knee film",
    "limb": "limb film (hand, arm, leg, hip or shoulder)",
}
REGION_WORDS: dict[str, str] = {"chest": "chest film", "knee": "knee image", "limb": "limb film"}

DEFAULT_RECOGNISER_PATH = (
    Path(__file__).resolve().parents[1] / "models" / "body-region-recogniser-v1" / "recogniser.npz"
)


@dataclass(frozen=True)
class Recognition:
    """What the recogniser thinks an image is.

    region: "chest" | "knee" | "limb" | "unrecognised".
    region_confidence: probability of the most likely region (sum of its classes), in [0, 1];
        reported even when the image is unrecognised, as the strength of the best guess.
    population: one of CLASSES, or "unrecognised" (far from all, or no class probable enough).
    probabilities: per class (keys = CLASSES), summing to 1.
    age_group: "children" | "adults" when population is a chest class, else None.
    distance: how far the image's appearance statistics are from the nearest training class,
        in units of that class's cut-off (above 1.0 = out of distribution, "unrecognised").
    """

    region: str
    region_confidence: float
    population: str
    probabilities: dict[str, float]
    age_group: str | None
    distance: float = 0.0

    @property
    def recognised(self) -> bool:
        return self.population != UNRECOGNISED

    def describe(self) -> str:
        """Plain words, e.g. 'adult chest film (97%)'."""
        if self.population != UNRECOGNISED:
            share = self.probabilities[self.population]
            return f"{DESCRIPTION_OF[self.population]} ({share:.0%})"
        if self.region != UNRECOGNISED:
            return f"{REGION_WORDS[self.region]}, type unclear ({self.region_confidence:.0%})"
        if self.distance > 1.0:
            return "not recognised: unlike any chest, knee or limb X-ray the recogniser knows"
        return "not recognised: no body region is probable enough"


# --------------------------------------------------------------------------- features


def thumbnail(pixels: np.ndarray) -> tuple[np.ndarray, float]:
    """Any-size grayscale image -> (128x128 uint8 thumbnail, log(width / height)).

    pixels: (H, W) uint8, 0 = black (core.imaging.XRay.pixels); (H, W, 3|4) is read as its
    luminance and other dtypes are clipped to 0..255. Images larger than 256 px are first
    sampled down to 256x256 (nearest pixel), then area-averaged to 128x128: an exact area resize
    of a 4000x4000 film costs milliseconds, and at 128 px the difference does not matter.
    """
    image = _as_gray_uint8(pixels)
    h, w = image.shape
    if h == 0 or w == 0:  # nothing to see: a flat thumbnail, which the recogniser rejects
        return np.zeros((THUMB_SIZE, THUMB_SIZE), np.uint8), 0.0
    if max(h, w) > 2 * THUMB_SIZE:
        image = cv2.resize(image, (2 * THUMB_SIZE, 2 * THUMB_SIZE), interpolation=cv2.INTER_NEAREST)
    small = cv2.resize(image, (THUMB_SIZE, THUMB_SIZE), interpolation=cv2.INTER_AREA)
    return small, float(np.log(w / h))


def _as_gray_uint8(pixels: np.ndarray) -> np.ndarray:
    image = np.asarray(pixels)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        image = image[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {image.shape}")
    if image.dtype != np.uint8:
        image = np.clip(np.nan_to_num(image.astype(np.float32)), 0, 255).astype(np.uint8)
    return image


def thumbnail_features(thumb: np.ndarray, log_aspect: float) -> np.ndarray:
    """128x128 uint8 thumbnail (+ log aspect ratio) -> float32 feature vector (N_FEATURES,).

    Layout: 32x32 picture standardised per image (1024), 16x16 gradient magnitude relative to
    its mean (256), sqrt of a 16-bin histogram (16), then N_STATISTICS appearance statistics.
    The picture is standardised so that exposure is left to the histogram and statistics:
    brightness alone should not decide the class.
    """
    t64 = cv2.resize(thumb, (64, 64), interpolation=cv2.INTER_AREA)
    t32 = cv2.resize(t64, (32, 32), interpolation=cv2.INTER_AREA)
    mean, spread = (float(v[0, 0]) for v in cv2.meanStdDev(t32))
    picture = (t32.astype(np.float32) - mean) / (spread + 4.0)
    f64 = t64.astype(np.float32)
    gx = cv2.Sobel(f64, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(f64, cv2.CV_32F, 0, 1, ksize=3)
    magnitude = cv2.resize(cv2.magnitude(gx, gy), (16, 16), interpolation=cv2.INTER_AREA)
    edge_level = cv2.mean(magnitude)[0]
    edges = magnitude / (edge_level + 8.0)
    counts = cv2.calcHist([t64], [0], None, [16], [0, 256]).ravel() / t64.size
    # sqrt: a histogram's big bins would otherwise swamp the small, telling ones
    histogram = np.sqrt(counts)
    statistics = appearance_statistics(
        thumb, t32, counts, mean=mean, spread=spread, edge_level=edge_level, log_aspect=log_aspect
    )
    return np.concatenate([picture.ravel(), edges.ravel(), histogram.astype(np.float32), statistics])


def appearance_statistics(
    thumb: np.ndarray,
    t32: np.ndarray,
    counts: np.ndarray,
    *,
    mean: float,
    spread: float,
    edge_level: float,
    log_aspect: float,
) -> np.ndarray:
    """A few numbers every radiograph keeps in a narrow range, whatever the body part: some
    contrast, neighbouring pixels nearly alike (anatomy is smooth at 128 px), a spread of grey
    levels. Blank frames, noise and patterns fall outside: the out-of-distribution distance is
    computed on these alone."""
    entropy = -float(counts @ np.log(np.maximum(counts, 1e-12)))
    return np.array(
        [
            mean / 64.0,
            np.log(spread + 0.5),
            np.log1p(edge_level) / 2.0,
            float(np.clip(log_aspect, -1.5, 1.5)),
            _roughness(t32, spread),
            _roughness(thumb, float(cv2.meanStdDev(thumb)[1][0, 0])),
            entropy,
            np.sqrt(counts[0]),
            np.sqrt(counts[-1]),
        ],
        dtype=np.float32,
    )


def _roughness(image: np.ndarray, spread: float) -> float:
    """Mean absolute difference of adjacent pixels relative to the image's spread: near 0 for
    smooth anatomy, about 1 for noise, 0 for a flat frame. uint8 image, spread = its std."""
    across = cv2.absdiff(image[:, 1:], image[:, :-1])
    down = cv2.absdiff(image[1:, :], image[:-1, :])
    return (cv2.mean(across)[0] + cv2.mean(down)[0]) / (2.0 * spread + 1.0)


N_STATISTICS = 9
N_FEATURES = 32 * 32 + 16 * 16 + 16 + N_STATISTICS


def image_features(pixels: np.ndarray) -> np.ndarray:
    """(H, W) uint8 image -> feature vector (N_FEATURES,) float32."""
    return thumbnail_features(*thumbnail(pixels))


# --------------------------------------------------------------------------- model


class Recogniser:
    """An MLP over image features plus an out-of-distribution distance, held as numpy arrays."""

    def __init__(self, arrays: dict[str, np.ndarray], *, source: str = "<memory>") -> None:
        self.source = source
        self.classes: tuple[str, ...] = tuple(str(c) for c in arrays["classes"])
        self.feature_mean = arrays["feature_mean"].astype(np.float32)
        self.feature_scale = arrays["feature_scale"].astype(np.float32)
        n_layers = int(arrays["n_layers"])
        self.layers = [
            (arrays[f"weight_{i}"].astype(np.float32), arrays[f"bias_{i}"].astype(np.float32))
            for i in range(n_layers)
        ]
        self.statistics_means = arrays["statistics_means"].astype(np.float32)  # (C, S)
        self.statistics_precisions = arrays["statistics_precisions"].astype(np.float32)  # (C, S, S)
        self.distance_cutoffs = arrays["distance_cutoffs"].astype(np.float32)  # (C,)
        self.min_region_confidence = float(arrays["min_region_confidence"])
        self.min_population_confidence = float(arrays["min_population_confidence"])
        self._check()

    def _check(self) -> None:
        if self.classes != CLASSES:
            raise ValueError(f"classes {self.classes} are not {CLASSES}")
        if self.feature_mean.shape != (N_FEATURES,) or self.feature_scale.shape != (N_FEATURES,):
            raise ValueError("feature standardisation does not match the feature extractor")
        width = N_FEATURES
        for weight, bias in self.layers:
            if weight.ndim != 2 or weight.shape[0] != width or bias.shape != (weight.shape[1],):
                raise ValueError(f"layer shapes {weight.shape}/{bias.shape} do not chain")
            width = weight.shape[1]
        if width != len(CLASSES):
            raise ValueError(f"the last layer has {width} outputs, not {len(CLASSES)}")
        if self.statistics_means.shape != (
            len(CLASSES),
            N_STATISTICS,
        ) or self.statistics_precisions.shape != (len(CLASSES), N_STATISTICS, N_STATISTICS):
            raise ValueError("appearance-statistics arrays have inconsistent shapes")
        if self.distance_cutoffs.shape != (len(CLASSES),) or not np.all(self.distance_cutoffs > 0):
            raise ValueError("distance cut-offs must be one positive number per class")

    @classmethod
    def load(cls, path: str | Path) -> Recogniser:
        """Read an .npz written by core.training.recogniser (no pickle).

        Raises RadTriageError naming the file when it is missing, unreadable or incomplete.
        """
        path = Path(path)
        if not path.is_file():
            raise RadTriageError(
                f"The body-region recogniser file {path} is missing: run "
                "`python manage.py train_recogniser` or restore it from the repository."
            )
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
            if int(arrays.get("feature_version", -1)) != FEATURE_VERSION:
                raise ValueError(f"feature version {arrays.get('feature_version')} is not {FEATURE_VERSION}")
            return cls(arrays, source=str(path))
        except RadTriageError:
            raise
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise RadTriageError(
                f"The body-region recogniser file {path} is corrupt or incomplete ({exc}); "
                "retrain it with `python manage.py train_recogniser`."
            ) from None

    # ----------------------------------------------------------------- numeric core

    def standardise(self, features: np.ndarray) -> np.ndarray:
        return (np.atleast_2d(features).astype(np.float32) - self.feature_mean) / self.feature_scale

    def probabilities(self, standardised: np.ndarray) -> np.ndarray:
        """(N, F) standardised features -> (N, C) softmax probabilities (ReLU hidden layers).

        One image (a vector-matrix product) at a time on purpose: for a batch, OpenBLAS starts
        its thread pool, and on a busy 2-core web host that cost 10-100x the arithmetic.
        """
        logits = np.stack([self._logits(row) for row in standardised])
        logits = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def _logits(self, activation: np.ndarray) -> np.ndarray:
        for index, (weight, bias) in enumerate(self.layers):
            activation = activation @ weight + bias
            if index < len(self.layers) - 1:
                activation = np.maximum(activation, 0.0)
        return activation

    def distances(self, standardised: np.ndarray) -> np.ndarray:
        """(N, F) standardised features -> (N,) distance from the training classes / cut-off.

        The Mahalanobis distance of the appearance statistics to each class's Gaussian, divided
        by that class's cut-off (the 99th percentile of its own validation images), nearest class
        taken: above 1.0 the image is out of distribution.
        (A Mahalanobis distance in a PCA of all features was tried and dropped: it put the
        real tibia DICOM as far from the training films as a photograph.)
        """
        statistics = standardised[:, -N_STATISTICS:]
        per_class = _mahalanobis(statistics, self.statistics_means, self.statistics_precisions)
        return (per_class / self.distance_cutoffs).min(axis=1)

    # ----------------------------------------------------------------- public

    def predict(self, pixels: np.ndarray) -> Recognition:
        """One (H, W) uint8 image -> Recognition."""
        return self.predict_many([pixels])[0]

    def predict_many(self, images: Sequence[np.ndarray]) -> list[Recognition]:
        if len(images) == 0:
            return []
        features = np.stack([image_features(image) for image in images])
        return self.predict_features(features)

    def predict_features(self, features: np.ndarray) -> list[Recognition]:
        standardised = self.standardise(features)
        probabilities = self.probabilities(standardised)
        distances = self.distances(standardised)
        return [self._decide(p, float(d)) for p, d in zip(probabilities, distances, strict=True)]

    def _decide(self, probabilities: np.ndarray, distance: float) -> Recognition:
        per_class = {name: float(p) for name, p in zip(self.classes, probabilities, strict=True)}
        per_region = {
            region: sum(p for c, p in per_class.items() if REGION_OF[c] == region) for region in REGIONS
        }
        region = max(per_region, key=per_region.__getitem__)
        region_confidence = per_region[region]
        population = max(per_class, key=per_class.__getitem__)
        if distance > 1.0 or region_confidence < self.min_region_confidence:
            region, population = UNRECOGNISED, UNRECOGNISED
        elif REGION_OF[population] != region or per_class[population] < self.min_population_confidence:
            population = UNRECOGNISED
        return Recognition(
            region=region,
            region_confidence=region_confidence,
            population=population,
            probabilities=per_class,
            age_group=AGE_GROUP_OF.get(population),
            distance=distance,
        )


def _mahalanobis(points: np.ndarray, means: np.ndarray, precisions: np.ndarray) -> np.ndarray:
    """(N, D) points, (C, D) means, (C, D, D) precisions -> (N, C) distances to each class."""
    squared = np.empty((points.shape[0], means.shape[0]), np.float32)
    for index, (mean, precision) in enumerate(zip(means, precisions, strict=True)):
        centred = points - mean
        squared[:, index] = np.sum((centred @ precision) * centred, axis=1)
    return np.sqrt(np.maximum(squared, 0.0))


_default: Recogniser | None = None
_default_lock = threading.Lock()


def default_recogniser() -> Recogniser:
    """The recogniser at DEFAULT_RECOGNISER_PATH, loaded once per process on first use."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Recogniser.load(DEFAULT_RECOGNISER_PATH)
    return _default


def recognise(pixels: np.ndarray) -> Recognition:
    """What body region / training population an (H, W) uint8 X-ray looks like."""
    return default_recogniser().predict(pixels)


def recognise_many(images: Sequence[np.ndarray]) -> list[Recognition]:
    """recognise() for several images in one batched forward pass."""
    return default_recogniser().predict_many(images)
