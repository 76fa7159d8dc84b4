"""The population check: pooled features as the head sees them, a distance with a validation
cut-off, a checked artifact, and (with ../shared) the shipped pneumonia population on real films."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.errors import RegistryError
from core.population import (
    METHOD_LEDOIT_WOLF,
    METHOD_PCA,
    METHOD_PPCA,
    PopulationModel,
)
from core.training.population_fit import candidate_grid, fit_population, select_population
from core.training.population_pipeline import find_pooling_layer, pooled_features
from tests.core.conftest import SHARED

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- features


def test_pooled_features_are_the_gap_output_and_the_model_is_untouched(blob_model):
    import keras

    from tests.core.tiny_models import make_blob_images

    images = make_blob_images(10, seed=3).images
    before = np.asarray(blob_model(images, training=False))
    n_layers = len(blob_model.layers)

    assert find_pooling_layer(blob_model) == "gap"
    pooled = pooled_features(blob_model, images, batch_size=4)

    backbone_maps = np.asarray(blob_model.get_layer("tiny_backbone")(images, training=False))
    assert pooled.shape == (10, 32)
    np.testing.assert_allclose(pooled, backbone_maps.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    gap_model = keras.Model(blob_model.inputs[0], blob_model.get_layer("gap").output)
    np.testing.assert_allclose(pooled, np.asarray(gap_model(images, training=False)), rtol=1e-5, atol=1e-6)
    assert len(blob_model.layers) == n_layers
    np.testing.assert_array_equal(np.asarray(blob_model(images, training=False)), before)


def test_the_served_grad_cam_pass_yields_the_same_features_the_population_was_fitted_on(blob_model):
    from core.gradcam import GradCam
    from tests.core.tiny_models import make_blob_images

    images = make_blob_images(6, seed=5).images
    served = GradCam(blob_model)(images).pooled
    np.testing.assert_allclose(served, pooled_features(blob_model, images), rtol=1e-4, atol=1e-5)


def test_a_model_without_global_pooling_is_refused_with_a_clear_message():
    import keras

    inputs = keras.Input((8, 8, 3))
    out = keras.layers.Dense(1)(keras.layers.Flatten()(inputs))
    with pytest.raises(ValueError, match="no GlobalAveragePooling2D"):
        find_pooling_layer(keras.Model(inputs, out))


# ----------------------------------------------------------------------------- distance


def _population(rng: np.random.Generator, n: int, *, shift: float = 0.0, mixing: np.ndarray) -> np.ndarray:
    """Correlated features like pooled maps: a low-rank signal plus a little noise."""
    latent = rng.normal(size=(n, mixing.shape[0]))
    return latent @ mixing + 0.3 * rng.normal(size=(n, mixing.shape[1])) + 2.0 + shift


def test_fit_keeps_held_out_in_population_points_and_rejects_other_populations(rng):
    d = 256
    mixing = rng.normal(size=(12, d)) / 2
    other_mixing = rng.normal(size=(12, d)) / 2
    train, val, test = (_population(rng, n, mixing=mixing) for n in (2000, 600, 3000))

    population = fit_population(train, val, pass_rate=0.97, margin=0.015)

    assert population.within(val).mean() >= 0.97
    assert population.within(test).mean() >= 0.97  # held out: neither fitted nor cut on
    assert population.within(_population(rng, 500, mixing=other_mixing)).mean() < 0.05
    assert population.within(_population(rng, 500, mixing=mixing, shift=0.3)).mean() < 0.05
    assert population.within(test[0]).shape == (1,)  # one image's vector works too


def test_selection_on_validation_keeps_the_pass_rate_whatever_the_method(rng):
    d = 64
    mixing = rng.normal(size=(6, d))
    train, val, test = (_population(rng, n, mixing=mixing) for n in (800, 1000, 2000))
    other_val = {"elsewhere": _population(rng, 200, mixing=rng.normal(size=(6, d)))}

    population, rows = select_population(
        train, val, other_val, candidates=candidate_grid(len(train), d, ledoit_wolf=True)
    )

    assert {row["method"] for row in rows} >= {METHOD_PCA, METHOD_PPCA, METHOD_LEDOIT_WOLF}
    assert all(row["val_pass_rate"] >= 0.97 for row in rows)
    assert population.within(test).mean() >= 0.97


def test_features_of_another_model_are_refused(rng):
    population = fit_population(rng.normal(size=(200, 32)), rng.normal(size=(100, 32)), k=8)
    with pytest.raises(ValueError, match=r"shape \(n, 32\)"):
        population.distance(rng.normal(size=(3, 1280)))


# ----------------------------------------------------------------------------- artifact


@pytest.fixture()
def saved(tmp_path, rng) -> tuple[Path, str, PopulationModel]:
    population = fit_population(
        rng.normal(size=(300, 40)), rng.normal(size=(100, 40)), k=10, feature_layer="gap"
    )
    path = tmp_path / "population.npz"
    return path, population.save(path), population


def test_a_saved_population_loads_back_identical(saved, rng):
    path, sha, population = saved
    loaded = PopulationModel.load(path, sha256=sha)
    x = rng.normal(size=(20, 40))
    np.testing.assert_array_equal(loaded.distance(x), population.distance(x))
    assert (loaded.cutoff, loaded.method, loaded.feature_layer) == (
        population.cutoff,
        population.method,
        "gap",
    )


def test_load_refuses_a_checksum_mismatch(saved):
    path, sha, _ = saved
    with pytest.raises(RegistryError, match="fails its checksum"):
        PopulationModel.load(path, sha256="0" * 64)


def test_load_refuses_a_corrupt_file(saved):
    path, _, _ = saved
    path.write_bytes(path.read_bytes()[:200])  # truncated mid-archive
    with pytest.raises(RegistryError, match="not a valid population model"):
        PopulationModel.load(path)


def test_load_refuses_a_file_with_pickled_objects(tmp_path):
    path = tmp_path / "population.npz"
    np.savez(path, mean=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(RegistryError, match="not a valid population model"):
        PopulationModel.load(path)


def test_load_says_how_to_create_a_missing_file(tmp_path):
    with pytest.raises(RegistryError, match="fit_population"):
        PopulationModel.load(tmp_path / "absent.npz")


# ----------------------------------------------------------------------------- real data


def _shared_test_images(condition: str, n: int, size: tuple[int, int]) -> np.ndarray:
    from core.imaging import load_xray
    from core.preprocessing import preprocess_gray

    folder = SHARED / "data" / condition / "test"
    files = sorted(folder.glob("*/*.jpg"))[::7][:n]
    return np.stack([preprocess_gray(load_xray(f).pixels, input_size=size) for f in files])


def test_the_shipped_pneumonia_population_keeps_children_chests_and_rejects_knee_crops():
    if not (SHARED / "data" / "pneumonia").is_dir():
        pytest.skip("real X-rays not available: ../shared/data is absent")
    import keras

    registry = json.loads((REPO / "registry.json").read_text())
    model_id = registry["active_models"]["pneumonia"]
    entry = next(m for m in registry["models"] if m["id"] == model_id)
    if "applicability" not in entry:
        pytest.skip(f"{model_id} has no fitted population yet (manage.py fit_population)")
    folder = (REPO / entry["artifact"]).parent
    population = PopulationModel.load(
        folder / entry["applicability"]["file"], sha256=entry["applicability"]["sha256"]
    )
    model = keras.models.load_model(REPO / entry["artifact"], compile=False)
    size = tuple(entry["input_size"])

    chests = pooled_features(model, _shared_test_images("pneumonia", 6, size))
    knees = pooled_features(model, _shared_test_images("knee_osteoarthritis", 6, size))

    assert population.within(chests).sum() >= 5
    assert population.within(knees).sum() <= 1
