"""Knee joints found on full films and read like the knee OA model's training crops
(core.joint_crop), and what such a read may and may not do (experimental, never a flag)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.errors import RegistryError
from core.joint_crop import TEMPLATE_FILE, JointCropper, paste_maps
from tests.core.conftest import SHARED

ROOT = Path(__file__).resolve().parents[2]
OA_MODEL = "knee_osteoarthritis-mobilenetv2-224-v1"
TEMPLATE = ROOT / "models" / OA_MODEL / TEMPLATE_FILE
DATA = SHARED / "data"


def _cropper() -> JointCropper:
    entry = next(m for m in json.loads((ROOT / "registry.json").read_text())["models"] if m["id"] == OA_MODEL)
    return JointCropper.from_entry(TEMPLATE.parent, entry["joint_crop"])


def _real_crops(n: int) -> list[np.ndarray]:
    import cv2

    folder = DATA / "knee_osteoarthritis" / "test" / "negative"
    if not folder.is_dir():
        pytest.skip("../shared/data/knee_osteoarthritis is absent")
    return [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted(folder.glob("*.jpg"))[:n]]


def test_both_knees_of_a_bilateral_film_are_found_where_they_are() -> None:
    import cv2

    film = np.full((700, 800), 12, np.uint8)  # dark background, as on a real film
    truth = [(90, 240, 220), (470, 250, 230)]  # x, y, side of each knee joint
    for crop, (x, y, side) in zip(_real_crops(2), truth, strict=True):
        film[y : y + side, x : x + side] = cv2.resize(crop, (side, side))
    found = _cropper().find(film)
    assert len(found) == 2, found
    h, w = film.shape
    centres = sorted(((x0 + x1) / 2 * w, (y0 + y1) / 2 * h) for _, (x0, y0, x1, y1) in found)
    for (cx, cy), (x, y, side) in zip(centres, truth, strict=True):
        assert abs(cx - (x + side / 2)) < 0.2 * side and abs(cy - (y + side / 2)) < 0.2 * side


def test_a_film_with_nothing_like_a_joint_gives_none() -> None:
    rng = np.random.default_rng(0)
    flat = np.full((400, 400), 100, np.uint8)
    noise = rng.integers(0, 40, (400, 400)).astype(np.uint8)  # dark: below the bone brightness
    assert _cropper().find(flat) == [] and _cropper().find(noise) == []


def test_each_crops_map_goes_back_to_its_place_and_nowhere_else() -> None:
    boxes = [(0.1, 0.2, 0.4, 0.5), (0.6, 0.2, 0.9, 0.5)]
    heat = paste_maps((100, 200), boxes, [np.ones((8, 8), np.float32), np.full((8, 8), 0.5, np.float32)])
    assert heat[35, 50] == 1.0 and heat[35, 150] == 0.5
    assert heat[80:, :].max() == 0 and heat[:, 90:110].max() == 0


def test_a_template_that_changed_on_disk_is_refused(tmp_path: Path) -> None:
    shutil.copy(TEMPLATE, tmp_path / TEMPLATE_FILE)
    spec = {"template": TEMPLATE_FILE, "sha256": "0" * 64}
    with pytest.raises(RegistryError, match="checksum"):
        JointCropper.from_entry(tmp_path, spec)


@pytest.mark.slow
def test_a_full_knee_film_is_read_through_its_joints_as_experimental_and_never_flags() -> None:
    from core.analysis import JOINT_CROP_UNVALIDATED, analyze_xrays
    from core.imaging import load_xray
    from core.model_manager import ModelManager

    films = sorted((DATA / "knee_osteoporosis" / "test").glob("*/*.jpg"))[:3]
    crops = sorted((DATA / "knee_osteoarthritis" / "test").glob("*/*.jpg"))[:2]
    if not films or not crops:
        pytest.skip("../shared/data knee sets are absent")
    manager = ModelManager(ROOT / "registry.json")
    outcomes = analyze_xrays([load_xray(p) for p in films], condition="knee_osteoarthritis", manager=manager)
    read = [o for o in outcomes if o.applicable]
    assert read, [o.not_applicable_reason for o in outcomes]  # the films are no longer all turned away
    for o in outcomes:
        joints = o.applicability["joints"]
        assert 1 <= len(joints) <= 2
        assert o.experimental and o.experimental_reason == JOINT_CROP_UNVALIDATED
        assert not o.flag
        assert any("knee joint" in n for n in o.notes)
        assert any("EXPERIMENTAL" in w for w in o.warnings)
        # The map is hot only inside the joints that were read.
        heat = o.heatmap
        mask = np.zeros_like(heat, bool)
        for joint in joints:
            x0, y0, x1, y1 = joint["box"]
            h, w = heat.shape
            mask[int(y0 * h) : int(np.ceil(y1 * h)) + 1, int(x0 * w) : int(np.ceil(x1 * w)) + 1] = True
        assert heat[~mask].max(initial=0) == 0
    # A training-style crop is still read as itself: no joints, not experimental on that account.
    direct = analyze_xrays([load_xray(p) for p in crops], condition="knee_osteoarthritis", manager=manager)
    assert all("joints" not in o.applicability for o in direct)
    assert all(o.experimental_reason != JOINT_CROP_UNVALIDATED for o in direct)
