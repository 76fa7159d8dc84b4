"""The applicability check on real films, with the committed models, recogniser and population
files: each active model keeps images of the population it was trained on and turns away the
others (adult vs children's chests, knee vs chest vs limb), and those never flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.core.conftest import SHARED

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
DATA = SHARED / "data"
PER_POPULATION = 4


def _films(folder: str) -> list:
    from core.imaging import load_xray

    root = DATA / folder / "test"
    if not root.is_dir():
        pytest.skip(f"../shared/data/{folder} is absent")
    paths = sorted(root.glob("*/*.jpg"))
    step = max(1, len(paths) // PER_POPULATION)  # spread over both labels
    return [load_xray(p) for p in paths[::step][:PER_POPULATION]]


@pytest.fixture(scope="module")
def manager():
    from core.model_manager import ModelManager

    return ModelManager(ROOT / "registry.json")


def _passes(manager, condition: str, folder: str) -> list:
    from core.analysis import analyze_xrays

    return analyze_xrays(_films(folder), condition=condition, manager=manager, allow_body_part_mismatch=True)


@pytest.mark.parametrize(
    ("condition", "own", "others"),
    [
        ("pneumonia", "pneumonia", ["cardiomegaly", "knee_osteoarthritis", "fracture"]),
        ("cardiomegaly", "cardiomegaly", ["pneumonia", "knee_osteoporosis", "fracture"]),
        # Full knee films are read through their joints now (tests/core/test_joint_crop.py).
        ("knee_osteoarthritis", "knee_osteoarthritis", ["cardiomegaly", "pneumonia"]),
        ("fracture", "fracture", ["cardiomegaly", "knee_osteoarthritis"]),
    ],
)
def test_each_model_keeps_its_population_and_turns_the_others_away(manager, condition, own, others) -> None:
    kept = _passes(manager, condition, own)
    assert not kept[0].is_placeholder, kept[0].placeholder_reason
    assert sum(o.applicable for o in kept) >= PER_POPULATION - 1, [o.not_applicable_reason for o in kept]
    for folder in others:
        outcomes = _passes(manager, condition, folder)
        assert sum(o.applicable for o in outcomes) <= 1, (folder, [o.applicability for o in outcomes])
        turned_away = [o for o in outcomes if not o.applicable]
        assert all(not o.flag and not o.positive for o in turned_away)
        assert all(
            o.not_applicable_reason.startswith("Outside this model's training population")
            for o in turned_away
        )
