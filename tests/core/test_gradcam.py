"""Grad-CAM localises what the model learned, through nested backbones and the fallback path;
the pointing game scores where a map points."""

from __future__ import annotations

import numpy as np
import pytest

from core.gradcam import (
    METHOD_ACTIVATION,
    METHOD_GRADCAM,
    METHOD_NONE,
    GradCam,
    find_last_conv_layer,
)
from core.localisation import heatmap_peak
from core.training.evaluation import clopper_pearson
from core.training.pointing_game import centre_baseline, load_boxes, pointing_game
from tests.core.conftest import SHARED
from tests.core.tiny_models import BLOB_RADIUS, SIZE, make_blob_images

pytestmark = pytest.mark.slow


def hit_rate(heatmaps: np.ndarray, centres: np.ndarray) -> float:
    """Share of maps whose peak falls inside the blob (with 2 px for the coarse 16x16 grid)."""
    hits = 0
    for heat, (r, c) in zip(heatmaps, centres, strict=True):
        pr, pc = np.unravel_index(np.argmax(heat), heat.shape)
        hits += (pr - r) ** 2 + (pc - c) ** 2 <= (BLOB_RADIUS + 2) ** 2
    return hits / len(heatmaps)


@pytest.fixture(scope="module")
def positives():
    data = make_blob_images(60, seed=99)
    keep = data.labels == 1
    return data.images[keep], data.centres[keep]


def test_the_tiny_model_learned_the_task(blob_model):
    data = make_blob_images(60, seed=7)
    predicted = blob_model.predict(data.images, verbose=0).ravel() > 0.5
    assert (predicted == data.labels.astype(bool)).mean() >= 0.9


def test_last_conv_layer_is_found_inside_the_nested_backbone(blob_model):
    assert find_last_conv_layer(blob_model) == ["tiny_backbone", "conv_last"]


def test_gradcam_peak_falls_inside_the_blob_through_the_nested_backbone(blob_model, positives):
    images, centres = positives
    result = GradCam(blob_model)(images)
    # By default the maps the head pools (after the last conv's activation), where the head
    # BatchNorm's mean is the reference for the evidence.
    assert result.layer == "tiny_backbone/out_relu"
    assert set(result.methods) == {METHOD_GRADCAM}
    assert result.heatmaps.shape == (len(images), SIZE, SIZE)
    assert result.heatmaps.min() >= 0.0 and result.heatmaps.max() <= 1.0
    assert hit_rate(result.heatmaps, centres) >= 0.8


def test_prediction_comes_from_the_same_single_pass(blob_model, positives):
    images, _ = positives
    result = GradCam(blob_model)(images[:8])
    expected = blob_model.predict(images[:8], verbose=0).ravel()
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-5)


def test_an_explicitly_named_layer_is_used(blob_model, positives):
    images, centres = positives
    result = GradCam(blob_model, layer="conv_b")(images)
    assert result.layer == "tiny_backbone/conv_b"
    assert hit_rate(result.heatmaps, centres) >= 0.7
    with pytest.raises(ValueError, match="not found"):
        GradCam(blob_model, layer="no_such_layer")


def test_gradcam_never_mutates_the_shared_model(blob_model, positives):
    images, _ = positives
    names_before = [layer.name for layer in blob_model.layers]
    weights_before = [w.copy() for w in blob_model.get_weights()]
    output_before = blob_model.predict(images[:4], verbose=0)
    GradCam(blob_model)(images[:4])
    GradCam(blob_model, method=METHOD_ACTIVATION)(images[:4])
    assert [layer.name for layer in blob_model.layers] == names_before
    assert len(blob_model.outputs) == 1
    for before, after in zip(weights_before, blob_model.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
    np.testing.assert_allclose(blob_model.predict(images[:4], verbose=0), output_before)


def test_fallback_when_gradients_are_unavailable_still_localises(blob_model, positives):
    """A graph that hides gradients (stop_gradient before the head) -> activation map."""
    import keras

    images, centres = positives
    backbone = blob_model.get_layer("tiny_backbone")
    inputs = keras.Input((SIZE, SIZE, 3))
    features = backbone(inputs)
    hidden = keras.layers.Lambda(lambda t: keras.ops.stop_gradient(t), name="no_grad")(features)
    x = hidden
    for name in ("gap", "head_bn", "head_dense_0", "head_dropout", "probability"):
        x = blob_model.get_layer(name)(x)
    opaque = keras.Model(inputs, x)
    result = GradCam(opaque)(images)
    assert set(result.methods) == {METHOD_ACTIVATION}
    assert hit_rate(result.heatmaps, centres) >= 0.7
    np.testing.assert_allclose(result.probabilities, blob_model.predict(images, verbose=0).ravel(), atol=1e-5)


def test_forced_activation_method_localises_too(blob_model, positives):
    images, centres = positives
    result = GradCam(blob_model, method=METHOD_ACTIVATION)(images)
    assert set(result.methods) == {METHOD_ACTIVATION}
    assert hit_rate(result.heatmaps, centres) >= 0.7


def test_all_zero_feature_maps_give_an_all_zero_map_not_nan():
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(
        4, 3, kernel_initializer="zeros", bias_initializer="zeros", activation="relu", name="dead_conv"
    )(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(1, activation="sigmoid")(x)
    result = GradCam(keras.Model(inputs, out))(np.random.rand(2, 32, 32, 3).astype("float32"))
    assert result.methods == (METHOD_NONE, METHOD_NONE)
    assert np.isfinite(result.heatmaps).all() and result.heatmaps.max() == 0.0
    np.testing.assert_allclose(result.probabilities, [0.5, 0.5])


def test_a_model_without_convolutions_is_a_clear_error():
    import keras

    inputs = keras.Input((8, 8, 3))
    out = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(inputs))
    with pytest.raises(ValueError, match="no convolutional layer"):
        GradCam(keras.Model(inputs, out))


# ----------------------------------------------------------------------------- the BN offset


DARK_SIZE, DARK_RADIUS = 32, 6


def dark_spot_model() -> object:
    """The paper's head, weights set by hand, on a model that calls a film positive when it is
    DARKER than the average training film (the head BatchNorm's moving mean 0.5): a dark spot is
    the finding. Its feature maps are non-negative and its Grad-CAM weight negative, so plain
    sum_k w_k A_k is <= 0 everywhere: the old map was empty and fell back to an activation map,
    which is hottest everywhere EXCEPT on the spot."""
    import keras

    backbone_in = keras.Input((DARK_SIZE, DARK_SIZE, 3))
    x = keras.layers.Conv2D(1, 1, name="conv_last")(backbone_in)
    x = keras.layers.Activation("relu", name="out_relu")(x)
    backbone = keras.Model(backbone_in, x, name="tiny_backbone")
    inputs = keras.Input((DARK_SIZE, DARK_SIZE, 3))
    h = keras.layers.GlobalAveragePooling2D(name="gap")(backbone(inputs))
    h = keras.layers.BatchNormalization(name="head_bn")(h)
    h = keras.layers.Dense(1, activation="relu", name="head_dense_0")(h)
    h = keras.layers.Dropout(0.3, name="head_dropout")(h)
    out = keras.layers.Dense(1, activation="sigmoid", name="probability")(h)
    model = keras.Model(inputs, out)
    backbone.get_layer("conv_last").set_weights(
        [np.full((1, 1, 3, 1), 1 / 3, "float32"), np.zeros(1, "float32")]
    )
    # gamma, beta, moving mean (the average film's brightness), moving variance
    model.get_layer("head_bn").set_weights([np.ones(1), np.zeros(1), np.full(1, 0.5), np.ones(1)])
    model.get_layer("head_dense_0").set_weights([np.full((1, 1), -100.0), np.zeros(1)])
    model.get_layer("probability").set_weights([np.ones((1, 1)), np.zeros(1)])
    return model


def dark_spot_films(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:DARK_SIZE, 0:DARK_SIZE]
    films, centres = [], []
    for _ in range(n):
        r, c = rng.integers(DARK_RADIUS + 1, DARK_SIZE - DARK_RADIUS - 1, size=2)
        film = np.full((DARK_SIZE, DARK_SIZE), 0.5, "float32")
        film[(yy - r) ** 2 + (xx - c) ** 2 <= DARK_RADIUS**2] = 0.0
        films.append(np.repeat(film[..., None], 3, axis=2))
        centres.append((r, c))
    return np.stack(films), np.array(centres)


def test_a_confident_positive_made_by_the_bn_offset_gets_gradcam_on_the_spot():
    model = dark_spot_model()
    films, centres = dark_spot_films(6)
    result = GradCam(model)(films)
    assert (result.probabilities > 0.99).all()  # confident positives
    assert result.methods == (METHOD_GRADCAM,) * 6  # a true Grad-CAM map, not the fallback
    yy, xx = np.mgrid[0:DARK_SIZE, 0:DARK_SIZE]
    for heat, (r, c) in zip(result.heatmaps, centres, strict=True):
        spot = (yy - r) ** 2 + (xx - c) ** 2 <= (DARK_RADIUS - 1) ** 2
        far = (yy - r) ** 2 + (xx - c) ** 2 > (DARK_RADIUS + 2) ** 2
        assert heat[spot].min() > 0.9 and heat[far].max() < 0.1  # hot on the spot, cold off it


def padded_spot_model(mu: float) -> object:
    """Features = 3x3 local mean of the film in [-1, 1] (as MobileNetV2 rescales), zero-padded:
    every film gets warmer edges and corners from the padding alone. Positive = brighter than
    the average film (head BN mean mu)."""
    import keras

    backbone_in = keras.Input((DARK_SIZE, DARK_SIZE, 3))
    x = keras.layers.Rescaling(2.0, offset=-1.0)(backbone_in)
    x = keras.layers.Conv2D(1, 3, padding="same", name="conv_last")(x)
    x = keras.layers.Activation("linear", name="out_maps")(x)
    backbone = keras.Model(backbone_in, x, name="tiny_backbone")
    inputs = keras.Input((DARK_SIZE, DARK_SIZE, 3))
    h = keras.layers.GlobalAveragePooling2D(name="gap")(backbone(inputs))
    h = keras.layers.BatchNormalization(name="head_bn")(h)
    h = keras.layers.Dense(1, activation="relu", name="head_dense_0")(h)
    out = keras.layers.Dense(1, activation="sigmoid", name="probability")(h)
    model = keras.Model(inputs, out)
    backbone.get_layer("conv_last").set_weights(
        [np.full((3, 3, 3, 1), 1 / 27, "float32"), np.zeros(1, "float32")]
    )
    model.get_layer("head_bn").set_weights([np.ones(1), np.zeros(1), np.full(1, mu), np.ones(1)])
    model.get_layer("head_dense_0").set_weights([np.full((1, 1), 100.0), np.zeros(1)])
    model.get_layer("probability").set_weights([np.ones((1, 1)), np.zeros(1)])
    return model


def test_padding_artefacts_common_to_every_film_do_not_warm_the_corners():
    model = padded_spot_model(mu=-0.9)
    films, centres = dark_spot_films(4)
    films = 1.0 - 2.0 * films  # bright spot (1.0) on a black film (0.0)
    films = np.clip(films, 0.0, 1.0)
    corners = (
        (slice(0, 2), slice(0, 2)),
        (slice(0, 2), slice(-2, None)),
        (slice(-2, None), slice(0, 2)),
        (slice(-2, None), slice(-2, None)),
    )
    result = GradCam(model)(films)
    assert (result.probabilities > 0.99).all() and set(result.methods) == {METHOD_GRADCAM}
    for heat, (r, c) in zip(result.heatmaps, centres, strict=True):
        assert heat[r, c] > 0.9
        assert max(heat[rs, cs].max() for rs, cs in corners) < 0.05
    # Without the blank-film reference the padding alone paints the corners.
    plain = GradCam(model, position_reference=False)(films)
    assert min(max(h[rs, cs].max() for rs, cs in corners) for h in plain.heatmaps) > 0.15


def test_a_mobilenetv2_backbone_gets_its_measured_finer_layer_and_1280_pooled_features():
    import keras

    from core.architectures import build_model
    from core.gradcam import MEASURED_LAYERS

    model = build_model("mobilenetv2", input_size=(64, 64), seed=0)
    images = np.random.default_rng(1).random((2, 64, 64, 3)).astype("float32")
    result = GradCam(model)(images)
    assert result.layer == f"mobilenetv2/{MEASURED_LAYERS['mobilenetv2']}"
    assert result.heatmaps.shape == (2, 64, 64) and np.isfinite(result.heatmaps).all()
    gap = keras.Model(model.inputs, model.get_layer("gap").output)
    np.testing.assert_allclose(result.pooled, gap.predict(images, verbose=0), rtol=1e-4, atol=1e-5)
    assert result.pooled.shape == (2, 1280)


def test_the_trained_models_confident_positives_get_gradcam(blob_model, positives):
    images, _ = positives
    result = GradCam(blob_model)(images)
    confident = result.probabilities >= 0.9
    assert confident.sum() >= 10
    assert {m for m, c in zip(result.methods, confident, strict=True) if c} == {METHOD_GRADCAM}


def test_pooled_features_are_the_gap_output_from_the_same_pass(blob_model, positives):
    import keras

    images, _ = positives
    result = GradCam(blob_model)(images[:8])
    gap = keras.Model(blob_model.inputs, blob_model.get_layer("gap").output)
    expected = gap.predict(images[:8], verbose=0)
    assert result.pooled.shape == (8, 32) and result.pooled.dtype == np.float32
    np.testing.assert_allclose(result.pooled, expected, rtol=1e-5, atol=1e-5)
    # The same vector whichever layer the map is drawn from.
    np.testing.assert_allclose(
        GradCam(blob_model, layer="conv_b")(images[:8]).pooled, expected, rtol=1e-5, atol=1e-5
    )


def test_without_a_pooling_layer_pooled_is_the_last_conv_maps_spatial_mean():
    import keras

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(5, 3, activation="relu", name="conv_only")(inputs)
    out = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, out)
    images = np.random.default_rng(0).random((3, 16, 16, 3)).astype("float32")
    result = GradCam(model)(images)
    maps = keras.Model(inputs, model.get_layer("conv_only").output).predict(images, verbose=0)
    assert result.layer == "conv_only" and result.pooled.shape == (3, 5)
    np.testing.assert_allclose(result.pooled, maps.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- pointing game


def test_the_peak_is_the_hottest_pixel_centre_as_fractions():
    heat = np.zeros((10, 20))
    heat[7, 3] = 1.0
    assert heat_peak_close(heatmap_peak(heat), (3.5 / 20, 7.5 / 10))


def test_a_clipped_plateau_peaks_at_its_middle_not_its_top_left_corner():
    heat = np.zeros((10, 10))
    heat[4:7, 5:8] = 1.0  # 3x3 plateau centred on (6, 5)
    assert heat_peak_close(heatmap_peak(heat), (6.5 / 10, 5.5 / 10))


def test_a_flat_map_points_nowhere_and_scores_a_miss():
    peak = heatmap_peak(np.zeros((8, 8)))
    assert np.isnan(peak).all()
    assert pointing_game([peak], [[(0.0, 0.0, 1.0, 1.0)]])["hits"] == 0


def test_a_hit_is_a_peak_inside_any_box_of_that_film():
    boxes = [
        [(0.1, 0.1, 0.2, 0.2), (0.6, 0.6, 0.9, 0.8)],  # two fractures: second one hit
        [(0.1, 0.1, 0.2, 0.2)],  # missed
        [(0.4, 0.4, 0.6, 0.6)],  # hit (also by the centre)
    ]
    result = pointing_game([(0.7, 0.7), (0.5, 0.5), (0.45, 0.55)], boxes)
    assert (result["hits"], result["n"]) == (2, 3)
    assert result["rate"] == 2 / 3
    assert result["hit_list"] == [True, False, True]
    assert centre_baseline(boxes)["hits"] == 1


def test_a_near_miss_counts_only_with_a_tolerance():
    boxes = [[(0.40, 0.40, 0.45, 0.45)]]
    assert pointing_game([(0.47, 0.43)], boxes)["hits"] == 0
    assert pointing_game([(0.47, 0.43)], boxes, tolerance=0.05)["hits"] == 1
    assert pointing_game([(0.60, 0.43)], boxes, tolerance=0.05)["hits"] == 0


def test_the_interval_is_exact_clopper_pearson():
    from scipy.stats import binomtest

    for hits, n in [(0, 10), (5, 10), (10, 10), (27, 45)]:
        expected = binomtest(hits, n).proportion_ci(confidence_level=0.95, method="exact")
        np.testing.assert_allclose(clopper_pearson(hits, n), (expected.low, expected.high), atol=1e-9)
    assert pointing_game([(0.5, 0.5)] * 10, [[(0.4, 0.4, 0.6, 0.6)]] * 10)["ci95"] == [0.6915, 1.0]


def test_box_files_group_several_boxes_per_film_and_filter_by_split(tmp_path):
    csv_path = tmp_path / "boxes.csv"
    csv_path.write_text(
        "path,x0,y0,x1,y1\n"
        "fracture/test/positive/a.jpg,0.1,0.1,0.2,0.2\n"
        "fracture/val/positive/b.jpg,0.3,0.3,0.4,0.4\n"
        "fracture/test/positive/a.jpg,0.5,0.5,0.7,0.6\n"
    )
    assert load_boxes(csv_path, split="test") == {
        "fracture/test/positive/a.jpg": [(0.1, 0.1, 0.2, 0.2), (0.5, 0.5, 0.7, 0.6)]
    }
    assert set(load_boxes(csv_path)) == {"fracture/test/positive/a.jpg", "fracture/val/positive/b.jpg"}
    csv_path.write_text("path,x0,y0,x1,y1\nfracture/test/positive/a.jpg,0.5,0.1,0.2,0.2\n")
    with pytest.raises(ValueError, match="not inside"):
        load_boxes(csv_path)


def test_the_real_fracture_boxes_load_for_validation_and_test():
    path = SHARED / "data" / "fracture_boxes.csv"
    if not path.is_file():
        pytest.skip("../shared/data/fracture_boxes.csv is absent")
    val, test = load_boxes(path, split="val"), load_boxes(path, split="test")
    assert len(val) > 50 and len(test) > 20 and not set(val) & set(test)
    assert all((SHARED / "data" / p).is_file() for p in list(test)[:5])


def heat_peak_close(peak: tuple[float, float], expected: tuple[float, float]) -> bool:
    return bool(np.allclose(peak, expected))
