"""Does a heat map point at the finding? The pointing game (Zhang et al. 2016) on boxed films.

A film is a hit when the hottest point of its heat map lies inside one of its boxes (a film may
have several fractures). Everything is in fractions of the image's width and height, so a box
drawn on the original film applies unchanged to the model's resized input (RadTriage resizes
without keeping the aspect ratio, core.preprocessing.resize_gray). The image-centre baseline asks
the same question of a "map" that always points at the middle: a heat map is worth showing only
if it beats that."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from core.localisation import CENTRE, Box, Point, point_in_boxes
from core.training.evaluation import clopper_pearson


def pointing_game(
    peaks: Sequence[Point], boxes: Sequence[Sequence[Box]], *, tolerance: float = 0.0
) -> dict[str, object]:
    """One peak and the list of boxes per film -> hits, n, rate, exact 95% CI (Clopper-Pearson).

    A film without a box cannot be scored and is refused rather than counted as a miss.
    tolerance 0 is the strict game (RadTriage's reported figure); Zhang et al. allowed 15 px.
    """
    if len(peaks) != len(boxes):
        raise ValueError(f"{len(peaks)} peaks for {len(boxes)} films")
    if any(len(b) == 0 for b in boxes):
        raise ValueError("every film scored by the pointing game needs at least one box")
    hit_list = [point_in_boxes(p, b, tolerance=tolerance) for p, b in zip(peaks, boxes, strict=True)]
    hits, n = int(sum(hit_list)), len(hit_list)
    low, high = clopper_pearson(hits, n)
    return {
        "hits": hits,
        "n": n,
        "rate": hits / n if n else math.nan,
        "ci95": [round(low, 4), round(high, 4)],
        "hit_list": hit_list,
    }


def centre_baseline(boxes: Sequence[Sequence[Box]]) -> dict[str, object]:
    """The pointing game of a map that always points at the image centre."""
    return pointing_game([CENTRE] * len(boxes), boxes)


def load_boxes(csv_path: str | Path, *, split: str | None = None) -> dict[str, list[Box]]:
    """fracture_boxes.csv (path, x0, y0, x1, y1 as fractions) -> {path: [box, ...]}.

    Paths stay as written (relative to the CSV's folder, '<condition>/<split>/<label>/<file>');
    `split` keeps only that split's films. A malformed box is an error, not a silent miss.
    """
    csv_path = Path(csv_path)
    out: dict[str, list[Box]] = {}
    with open(csv_path, newline="", encoding="utf-8") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            path = row["path"]
            if split is not None and _split_of(path) != split:
                continue
            box = tuple(float(row[k]) for k in ("x0", "y0", "x1", "y1"))
            x0, y0, x1, y1 = box
            if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
                raise ValueError(f"{csv_path}:{line}: box {box} is not inside [0, 1] fractions")
            out.setdefault(path, []).append(box)  # type: ignore[arg-type]
    return out


def _split_of(path: str) -> str | None:
    parts = Path(path).parts
    return parts[1] if len(parts) >= 3 else None


def summary(result: Mapping[str, object]) -> str:
    """'0.27 (12/45, 95% CI 0.15-0.42)' for a pointing_game result."""
    ci95 = result["ci95"]
    assert isinstance(ci95, tuple | list)
    low, high = ci95
    return f"{result['rate']:.2f} ({result['hits']}/{result['n']}, 95% CI {low:.2f}-{high:.2f})"
