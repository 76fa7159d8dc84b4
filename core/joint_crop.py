"""Knee joints found on a full knee film and cut out the way the knee OA model's training crops
were made: a model is served the way it was trained.

The knee OA model learned from the Osteoarthritis Initiative crops of Chen et al. 2019: one knee
joint per 224x224 image, femoral condyles above, tibial plateau below, contrast-equalised with
CLAHE. A department sends full knee films, often both knees on one film, which the model never
saw (the applicability check turns them away). This module finds each joint by normalised
cross-correlation with the MEAN training crop (a 64x64 template made offline from the train
split, `joint_template.npy` beside the model), at every scale from 18% to 70% of the film's
shorter side, on a CLAHE copy of the film reduced to 256 px. The best match is one joint; the
best match that does not overlap it, at a similar scale and nearly as good, is the other knee.
Each joint is cut out square, resized to the model's input and equalised with CLAHE.

numpy + OpenCV only: ~20 ms a film on one core, so it runs inside the worker beside the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from core.errors import RegistryError
from core.localisation import Box
from core.preprocessing import resize_gray

TEMPLATE_FILE = "joint_template.npy"
SEARCH_SIDE = 256  # the film is searched at this size (its longer side)
SCALE_STEP = 4  # px at SEARCH_SIDE between template sizes
MIN_SIDE, MAX_SIDE = 0.18, 0.70  # a joint's crop, as a share of the film's shorter side
SECOND_KNEE_SCORE = 0.85  # the other knee must match at least this share of the best score
SECOND_KNEE_SCALE = (0.75, 1.33)


@dataclass(frozen=True)
class JointCropper:
    """The serving half: a template and the CLAHE the training crops had."""

    template: np.ndarray  # float32 (t, t), the mean training crop
    min_score: float = 0.5  # below this correlation nothing on the film looks like a knee joint
    clahe_clip: float = 2.0
    clahe_grid: int = 8
    scale: float = 1.0  # the crop's side relative to the matched template's

    @classmethod
    def from_entry(cls, folder: Path, spec: dict[str, object]) -> JointCropper:
        """The entry's "joint_crop" object: template file (checksum verified) and settings."""
        from core.registry import sha256_file

        path = folder / str(spec.get("template", TEMPLATE_FILE))
        if not path.is_file():
            raise RegistryError(f"joint crop template {path.name} is missing beside the model")
        expected = spec.get("sha256")
        if expected and sha256_file(path) != expected:
            raise RegistryError(f"joint crop template {path.name} does not match its checksum")
        template = np.load(path, allow_pickle=False)
        if template.ndim != 2 or template.shape[0] != template.shape[1]:
            raise RegistryError(f"joint crop template {path.name} is not a square 2-D array")
        return cls(
            template=template.astype(np.float32),
            min_score=float(spec.get("min_score", 0.5)),  # type: ignore[arg-type]
            clahe_clip=float(spec.get("clahe_clip", 2.0)),  # type: ignore[arg-type]
            clahe_grid=int(spec.get("clahe_grid", 8)),  # type: ignore[call-overload]
            scale=float(spec.get("scale", 1.0)),  # type: ignore[arg-type]
        )

    def find(self, gray: np.ndarray, *, max_joints: int = 2) -> list[tuple[float, Box]]:
        """(correlation, box as fractions) of each joint found, best first; [] if none."""
        height, width = gray.shape
        scale = SEARCH_SIDE / max(height, width)
        small = cv2.resize(
            gray, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
        )
        # Bone is brighter than the film's average; a dark patch that the equalisation made
        # look textured (the black background beside a single knee) is not a joint.
        integral = cv2.integral(small.astype(np.float64))
        floor = float(small.mean())
        small = self._clahe().apply(small).astype(np.float32)
        short = min(small.shape)
        matches: list[tuple[float, int, int, int]] = []  # score, x, y, side at search size
        for side in range(max(8, int(short * MIN_SIDE)), int(short * MAX_SIDE) + 1, SCALE_STEP):
            kernel = cv2.resize(self.template, (side, side), interpolation=cv2.INTER_AREA)
            response = cv2.matchTemplate(small, kernel, cv2.TM_CCOEFF_NORMED)
            for y, x in _local_peaks(response, radius=max(2, side // 2)):
                total = integral[y + side, x + side] - integral[y, x + side] - integral[y + side, x]
                if (total + integral[y, x]) / (side * side) > floor:
                    matches.append((float(response[y, x]), int(x), int(y), side))
        matches.sort(reverse=True)
        chosen: list[tuple[float, int, int, int]] = []
        for match in matches:
            if len(chosen) >= max_joints or match[0] < self.min_score:
                break
            beside = bool(chosen) and _is_other_knee(match, chosen[0])
            if not chosen or (beside and not any(_overlaps(match, c) for c in chosen)):
                chosen.append(match)
        sh, sw = small.shape
        out = []
        for score, x, y, side in chosen:
            cx, cy, half = x + side / 2, y + side / 2, side * self.scale / 2
            box = (max(0.0, (cx - half) / sw), max(0.0, (cy - half) / sh))
            out.append((score, (*box, min(1.0, (cx + half) / sw), min(1.0, (cy + half) / sh))))
        return out

    def crop(self, gray: np.ndarray, box: Box, *, size: Sequence[int]) -> np.ndarray:
        """uint8 (h, w) film + a box as fractions -> uint8 crop at `size`, CLAHE applied."""
        r0, r1, c0, c1 = _pixel_span(box, *gray.shape)
        return self._clahe().apply(resize_gray(gray[r0:r1, c0:c1], input_size=size))

    def _clahe(self) -> cv2.CLAHE:
        return cv2.createCLAHE(clipLimit=self.clahe_clip, tileGridSize=(self.clahe_grid, self.clahe_grid))


def _local_peaks(response: np.ndarray, *, radius: int) -> list[tuple[int, int]]:
    """(row, col) of the maxima of a correlation map that are the highest within `radius`."""
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    dilated = cv2.dilate(response, kernel)
    rows, cols = np.nonzero((response >= dilated) & (response > 0))
    return list(zip(rows.tolist(), cols.tolist(), strict=True))


def _overlaps(a: tuple[float, int, int, int], b: tuple[float, int, int, int]) -> bool:
    _, ax, ay, aside = a
    _, bx, by, bside = b
    return ax < bx + bside and bx < ax + aside and ay < by + bside and by < ay + aside


def _is_other_knee(match: tuple[float, int, int, int], best: tuple[float, int, int, int]) -> bool:
    """Nearly as good a match, at a similar scale, BESIDE the best one (an AP film of both
    knees), not above or below it on the same leg."""
    low, high = SECOND_KNEE_SCALE
    score, x, y, side = match
    best_score, bx, by, bside = best
    beside = abs((y + side / 2) - (by + bside / 2)) <= 0.5 * bside and abs(x - bx) >= 0.8 * bside
    return score >= SECOND_KNEE_SCORE * best_score and low <= side / bside <= high and beside


def _pixel_span(box: Box, height: int, width: int) -> tuple[int, int, int, int]:
    """A box as fractions -> rows r0:r1 and columns c0:c1 of a (height, width) image, at
    least one pixel each way, inside the image."""
    x0, y0, x1, y1 = box
    r0, c0 = int(round(y0 * height)), int(round(x0 * width))
    r1 = min(max(int(round(y1 * height)), r0 + 1), height)
    c1 = min(max(int(round(x1 * width)), c0 + 1), width)
    return r0, r1, c0, c1


def paste_maps(shape: Sequence[int], boxes: Sequence[Box], maps: Sequence[np.ndarray]) -> np.ndarray:
    """Each crop's heat map put back where its crop came from, on a float32 map of `shape`
    (the film reduced to its search size): what the overlay draws on the full film."""
    height, width = int(shape[0]), int(shape[1])
    out = np.zeros((height, width), np.float32)
    for box, heat in zip(boxes, maps, strict=True):
        r0, r1, c0, c1 = _pixel_span(box, height, width)
        patch = cv2.resize(np.asarray(heat, np.float32), (c1 - c0, r1 - r0), interpolation=cv2.INTER_LINEAR)
        out[r0:r1, c0:c1] = np.maximum(out[r0:r1, c0:c1], patch)
    return out


def search_shape(gray: np.ndarray) -> tuple[int, int]:
    """The film's (h, w) reduced so its longer side is SEARCH_SIDE (the pasted map's size)."""
    height, width = gray.shape
    scale = SEARCH_SIDE / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def make_template(crops: Sequence[np.ndarray], *, side: int = 64) -> np.ndarray:
    """Offline: the mean of training crops (uint8, any size) and its mirror image, float32."""
    stack = np.stack(
        [cv2.resize(c, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32) for c in crops]
    )
    mean = stack.mean(axis=0)
    return ((mean + mean[:, ::-1]) / 2).astype(np.float32)
