"""Labelled X-ray data sets for training and evaluation (framework-free: numpy only).

Two ways to describe a data set, both as in ../shared/data:
- a folder `<root>/<split>/<negative|positive>/*.(jpg|jpeg|png|dcm)`;
- a manifest CSV with columns path, split, label, group (and optionally condition), paths
  relative to the CSV's folder.

Groups (patients, or source images) must never cross splits: `check_groups_disjoint` refuses
a data set where one does. When a folder lies under a folder holding `manifest.csv`, the groups
are read from it; otherwise each file is its own group.

Images are decoded exactly as at serve time (core.imaging.load_xray -> uint8 gray) and resized
with core.preprocessing's rule, then kept as uint8 (n, h, w) arrays; `to_model_input` turns
them into the float32 RGB [0, 1] the models take, identical to core.preprocessing.preprocess_gray.
Decoded arrays are cached as .npz keyed by the file list and size, so a second run (or a resumed
one) does not decode thousands of JPEGs again.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.preprocessing import resize_gray  # the one resize rule shared with serving

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".dcm")
LABEL_FOLDERS = {"negative": 0, "positive": 1}
SPLITS = ("train", "val", "test", "smoke")


@dataclass(frozen=True)
class Sample:
    path: Path
    split: str
    label: int  # 1 = condition present
    group: str


@dataclass
class ArraySplit:
    """Decoded images of one split. x: uint8 (n, h, w); y: int64 (n,) in {0, 1}."""

    x: np.ndarray
    y: np.ndarray
    paths: list[str]
    groups: list[str]

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    def counts(self) -> dict[str, int]:
        return {"n": self.n, "negative": int((self.y == 0).sum()), "positive": int((self.y == 1).sum())}


# ----------------------------------------------------------------------------- listing


def find_manifest(folder: Path) -> Path | None:
    """The nearest manifest.csv in `folder` or one of its two parents."""
    for candidate in (folder, *list(folder.parents)[:2]):
        m = candidate / "manifest.csv"
        if m.is_file():
            return m
    return None


def samples_from_folder(root: str | Path, *, splits: Iterable[str] | None = None) -> list[Sample]:
    """`<root>/<split>/<negative|positive>/*` -> samples, groups from a nearby manifest.csv."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"Data folder not found: {root}")
    wanted = set(splits) if splits is not None else None
    groups = _manifest_groups(root)
    samples: list[Sample] = []
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if wanted is not None and split_dir.name not in wanted:
            continue
        for label_name, label in LABEL_FOLDERS.items():
            folder = split_dir / label_name
            if not folder.is_dir():
                continue
            for f in sorted(folder.iterdir()):
                if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                    group = groups.get(f.resolve(), f"{split_dir.name}/{f.stem}")
                    samples.append(Sample(f, split_dir.name, label, group))
    if not samples:
        raise ValueError(f"No images found under {root}: expected <split>/<negative|positive>/*.jpg")
    return samples


def samples_from_manifest(
    csv_path: str | Path, *, condition: str | None = None, splits: Iterable[str] | None = None
) -> list[Sample]:
    """Rows of a manifest CSV (path, split, label, group[, condition]) -> samples."""
    csv_path = Path(csv_path).resolve()
    wanted = set(splits) if splits is not None else None
    samples = []
    with open(csv_path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if condition is not None and row.get("condition", condition) != condition:
                continue
            if wanted is not None and row["split"] not in wanted:
                continue
            path = Path(row["path"])
            path = path if path.is_absolute() else csv_path.parent / path
            samples.append(Sample(path, row["split"], int(row["label"]), row.get("group") or path.stem))
    if not samples:
        raise ValueError(f"No rows for condition={condition!r} in {csv_path}")
    return samples


def load_samples(
    data: str | Path, *, condition: str | None = None, splits: Iterable[str] | None = None
) -> list[Sample]:
    """A folder or a manifest CSV -> samples; group leakage across splits is refused."""
    p = Path(data)
    samples = (
        samples_from_manifest(p, condition=condition, splits=splits)
        if p.suffix.lower() == ".csv"
        else samples_from_folder(p, splits=splits)
    )
    check_groups_disjoint(samples)
    return samples


def check_groups_disjoint(samples: Sequence[Sample]) -> None:
    splits_of: dict[str, set[str]] = {}
    for s in samples:
        splits_of.setdefault(s.group, set()).add(s.split)
    leaks = {g: sorted(v) for g, v in splits_of.items() if len(v) > 1}
    if leaks:
        some = ", ".join(f"{g} in {'/'.join(v)}" for g, v in list(leaks.items())[:5])
        raise ValueError(
            f"{len(leaks)} group(s) (patients/source images) appear in more than one split, "
            f"which would leak test data into training: {some}"
        )


def split_counts(samples: Sequence[Sample]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    c = Counter((s.split, s.label) for s in samples)
    for split in sorted({s.split for s in samples}):
        neg, pos = c[(split, 0)], c[(split, 1)]
        out[split] = {"n": neg + pos, "negative": neg, "positive": pos}
    return out


def _manifest_groups(root: Path) -> dict[Path, str]:
    manifest = find_manifest(root)
    if manifest is None:
        return {}
    groups = {}
    with open(manifest, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if "path" in row and row.get("group"):
                groups[(manifest.parent / row["path"]).resolve()] = row["group"]
    return groups


# ----------------------------------------------------------------------------- decoding


def decode_resized(path: str | Path, *, input_size: Sequence[int]) -> np.ndarray:
    """One file -> uint8 (h, w): serve-time decoding and core.preprocessing's resize rule."""
    from core.imaging import load_xray

    pixels = load_xray(path).pixels
    return resize_gray(pixels, input_size=input_size)


def load_arrays(
    samples: Sequence[Sample],
    *,
    input_size: Sequence[int],
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> ArraySplit:
    """Decode and resize samples (in order) -> ArraySplit, cached under cache_dir."""
    paths = [str(Path(s.path).resolve()) for s in samples]
    cache_file = None
    if cache_dir is not None:
        key = hashlib.sha256(("\n".join(paths) + f"|{tuple(input_size)}|v1").encode()).hexdigest()[:20]
        cache_file = Path(cache_dir) / f"arrays-{key}.npz"
        if cache_file.is_file():
            with np.load(cache_file) as z:
                return ArraySplit(z["x"], z["y"], paths, [s.group for s in samples])
    items: Iterable[Sample] = samples
    if progress:
        from tqdm import tqdm

        items = tqdm(samples, desc="decode", unit="img")
    x = (
        np.stack([decode_resized(s.path, input_size=input_size) for s in items])
        if samples
        else np.zeros((0, *input_size), np.uint8)
    )
    y = np.array([s.label for s in samples], dtype=np.int64)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp.npz")
        np.savez(tmp, x=x, y=y)
        tmp.replace(cache_file)
    return ArraySplit(x, y, paths, [s.group for s in samples])


def load_split(samples: Sequence[Sample], split: str, **kwargs: object) -> ArraySplit:
    return load_arrays([s for s in samples if s.split == split], **kwargs)  # type: ignore[arg-type]
