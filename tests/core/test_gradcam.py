"""Grad-CAM localises what the model learned, through nested backbones and the fallback path."""

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
    assert result.layer == "tiny_backbone/conv_last"
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
    np.testing.assert_allclose(result.probabilities,
                               blob_model.predict(images, verbose=0).ravel(), atol=1e-5)


def test_forced_activation_method_localises_too(blob_model, positives):
    images, centres = positives
    result = GradCam(blob_model, method=METHOD_ACTIVATION)(images)
    assert set(result.methods) == {METHOD_ACTIVATION}
    assert hit_rate(result.heatmaps, centres) >= 0.7


def test_all_zero_feature_maps_give_an_all_zero_map_not_nan():
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, kernel_initializer="zeros", bias_initializer="zeros",
                            activation="relu", name="dead_conv")(inputs)
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
