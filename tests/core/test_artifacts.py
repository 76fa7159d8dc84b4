"""Every committed model artifact: present, checksum matches registry.json, loads, and
predicts on one real image of its condition (skipped with a reason when ../shared is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.registry import Registry, sha256_file

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = ROOT / "registry.json"
SHARED_DATA = ROOT.parent / "shared" / "data"
MAX_TOTAL_BYTES = 150 * 1024 * 1024


def _entries() -> list:
    return sorted(Registry.load(REGISTRY).models.values(), key=lambda e: e.id)


ENTRIES = _entries()
IDS = [e.id for e in ENTRIES]


def test_the_registry_validates_and_every_active_model_is_registered() -> None:
    registry = Registry.load(REGISTRY)
    for condition, model_id in registry.active_models.items():
        assert registry.entry(model_id).condition == condition


def test_committed_artifacts_stay_under_150_mb() -> None:
    total = sum(
        p.stat().st_size
        for p in (ROOT / "models").rglob("*")
        if p.is_file() and "checkpoints" not in p.parts and "_runs" not in p.parts
    )
    assert total < MAX_TOTAL_BYTES, f"models/ holds {total / 2**20:.0f} MiB"


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_artifact_is_present_with_the_registered_checksum_and_a_card(entry) -> None:
    registry = Registry.load(REGISTRY)
    path = registry.artifact_path(entry)
    assert path.is_file(), f"{entry.id}: artifact {path} missing"
    assert sha256_file(path) == entry.sha256, f"{entry.id}: checksum differs from registry"
    card = ROOT / entry.raw["card"]
    assert card.is_file() and "## Limitations" in card.read_text()
    if entry.is_experimental:
        assert entry.experimental_reason and "EXPERIMENTAL" in card.read_text()
    for split, metrics in entry.raw["metrics"].items():
        assert len(metrics["auc_ci95"]) == 2, split


@pytest.mark.slow
@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_artifact_loads_and_predicts_on_a_real_image(entry) -> None:
    folder = SHARED_DATA / entry.condition
    if not folder.is_dir():
        pytest.skip(f"../shared/data/{entry.condition} is absent: no real image to predict on")
    import keras

    from core.calibration import apply_calibration
    from core.imaging import load_xray
    from core.preprocessing import preprocess_gray

    image = next(p for p in sorted(folder.rglob("*.jpg")))
    batch = preprocess_gray(load_xray(image).pixels, input_size=entry.input_size)[None]
    model = keras.models.load_model(Registry.load(REGISTRY).artifact_path(entry), compile=False)
    raw = np.asarray(model(batch, training=False)).reshape(-1)
    assert raw.shape == (1,) and np.isfinite(raw).all() and 0.0 <= raw[0] <= 1.0
    p = apply_calibration(raw, entry.calibration)
    assert 0.0 <= float(p[0]) <= 1.0
