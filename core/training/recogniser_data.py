"""Data of the body-region recogniser (core.recognition): the manifest, cached 128x128
thumbnails, augmentation and balanced feature sets. Decoded thumbnails are cached under
var/cache so that re-training takes a minute or two, not a re-decode of 15,000 JPEGs.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from core.recognition import CLASSES, FEATURE_VERSION, thumbnail, thumbnail_features

log = logging.getLogger(__name__)

CONDITION_CLASS: dict[str, str] = {
    "pneumonia": "chest_child",
    "cardiomegaly": "chest_adult",
    "knee_osteoarthritis": "knee_crop",
    "knee_osteoporosis": "knee_film",
    "fracture": "limb",
}
DICOM_EXPECTED: dict[str, str] = {  # file -> the region a radiologist would name
    "RG1_J2KI.dcm": "chest",
    "RG3_J2KI.dcm": "limb",
    "RG3_J2KR.dcm": "limb",
    **{f"nih_dx_test{i}.dcm": "chest" for i in range(1, 7)},
}
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
DEFAULT_CACHE_DIR = REPO_ROOT / "var" / "cache" / "recogniser"
DEFAULT_OUT_DIR = REPO_ROOT / "models" / "body-region-recogniser-v1"
CUTOFF_PERCENTILE = 99.0  # of validation distances: about 1% of real validation images rejected
MIN_REGION_CONFIDENCE = 0.6
ZOOM = (0.85, 1.3)  # chosen on val (MLP-128 balanced accuracy): 0.65 gave 98.2%, 0.85 98.5%
MIN_POPULATION_CONFIDENCE = 0.5


@dataclass(frozen=True)
class ThumbnailSet:
    """Decoded images of one split: thumbs (N, 128, 128) uint8, log_aspects (N,), labels (N,)
    as indices into CLASSES, paths (N,) relative to the data folder."""

    thumbs: np.ndarray
    log_aspects: np.ndarray
    labels: np.ndarray
    paths: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


# --------------------------------------------------------------------------- data


def manifest_rows(data_dir: Path, split: str) -> list[dict[str, str]]:
    with (Path(data_dir) / "manifest.csv").open(newline="") as handle:
        rows = [
            row
            for row in csv.DictReader(handle)
            if row["split"] == split and row["condition"] in CONDITION_CLASS
        ]
    return sorted(rows, key=lambda row: row["path"])


def load_split(data_dir: Path, split: str, *, cache_dir: Path = DEFAULT_CACHE_DIR) -> ThumbnailSet:
    """Thumbnails of one manifest split, decoded through core.imaging.load_xray (the serving
    decoder) and core.recognition.thumbnail (the serving resize); cached as .npz."""
    rows = manifest_rows(data_dir, split)
    paths = np.array([row["path"] for row in rows])
    labels = np.array([CLASSES.index(CONDITION_CLASS[row["condition"]]) for row in rows], np.int64)
    cache = Path(cache_dir) / f"thumbs-v{FEATURE_VERSION}-{split}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as data:
            if np.array_equal(data["paths"], paths):
                return ThumbnailSet(data["thumbs"], data["log_aspects"], labels, paths)
    from core.imaging import load_xray

    thumbs = np.empty((len(rows), 128, 128), np.uint8)
    aspects = np.empty(len(rows), np.float32)
    for index, path in enumerate(paths):
        thumbs[index], aspects[index] = thumbnail(load_xray(Path(data_dir) / path).pixels)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, thumbs=thumbs, log_aspects=aspects, paths=paths)
    return ThumbnailSet(thumbs, aspects, labels, paths)


# --------------------------------------------------------------------------- augmentation


def augment(thumb: np.ndarray, log_aspect: float, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A plausible other acquisition of the same film: crop/zoom, small rotation, stretch,
    mirror, exposure (brightness, contrast, gamma), blur and noise.

    The log aspect ratio is jittered too: most sets were stored squashed to a square, so a
    real film's aspect says little about its class and must not become a shortcut.
    """
    size = thumb.shape[0]
    stretch = float(np.exp(rng.uniform(-0.15, 0.15)))
    scale = rng.uniform(*ZOOM)  # below 1: the film sits inside a border, as many do
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), rng.uniform(-10, 10), scale)
    matrix[0] *= stretch  # widen or narrow about the centre
    matrix[0, 2] += (1.0 - stretch) * size / 2
    matrix[:, 2] += rng.uniform(-0.08, 0.08, 2) * size
    border = rng.choice(3)  # unexposed black, collimated white, or more of the same
    image = cv2.warpAffine(
        thumb,
        matrix,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT_101 if border == 2 else cv2.BORDER_CONSTANT,
        borderValue=255 * int(border == 1),
    )
    if rng.random() < 0.5:
        image = image[:, ::-1]
    values = image.astype(np.float32) / 255.0
    values = (values - values.mean()) * rng.uniform(0.75, 1.3) + values.mean() + rng.uniform(-0.1, 0.1)
    values = np.clip(values, 0.0, 1.0) ** float(np.exp(rng.uniform(-0.35, 0.35)))
    if rng.random() < 0.2:
        values = cv2.GaussianBlur(values, (0, 0), rng.uniform(0.5, 1.5))
    if rng.random() < 0.3:
        values = values + rng.normal(0.0, rng.uniform(1, 6) / 255.0, values.shape).astype(np.float32)
    out = np.clip(values * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out, float(log_aspect + np.log(stretch) + rng.uniform(-0.25, 0.25))


def clean_features(data: ThumbnailSet) -> np.ndarray:
    return np.stack(
        [thumbnail_features(t, float(a)) for t, a in zip(data.thumbs, data.log_aspects, strict=True)]
    )


def balanced_features(
    data: ThumbnailSet, *, per_class: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """per_class augmented samples of every class: small classes are cycled through (every
    image used before any is repeated), big ones subsampled, so each class weighs the same."""
    features, labels = [], []
    for label in range(len(CLASSES)):
        members = np.flatnonzero(data.labels == label)
        order = np.concatenate([rng.permutation(members) for _ in range(-(-per_class // len(members)))])[
            :per_class
        ]
        for index in order:
            thumb, aspect = augment(data.thumbs[index], float(data.log_aspects[index]), rng)
            features.append(thumbnail_features(thumb, aspect))
            labels.append(label)
    return np.stack(features), np.array(labels, np.int64)
