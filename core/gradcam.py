"""Grad-CAM computed in the same forward pass as the prediction.

`GradCam` wraps a trained Keras model without touching it: it builds a second functional graph
that *shares* the model's layers and weights and outputs both the target feature maps and the
score. One compiled call (tf.function) runs the forward pass under a GradientTape and
differentiates the positive-class logit with respect to the feature maps; the gradient only runs
back through the head, so the whole call costs about one forward pass.

The target is the last convolutional layer, found automatically even inside a nested backbone
(e.g. `mobilenetv2/Conv_1`), or named explicitly (registry `gradcam_layer`, "backbone/layer" or
just the layer name). If gradients are unavailable (a graph that hides them) or the Grad-CAM map
is all zero, an activation map (mean absolute activation) is returned instead, and the method
says so. A map is always returned.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

METHOD_GRADCAM = "gradcam"
METHOD_ACTIVATION = "activation_mean"  # fallback: gradients unavailable or all-zero map
METHOD_NONE = "uniform"  # feature maps themselves were all zero: nothing to show
METHODS = (METHOD_GRADCAM, METHOD_ACTIVATION, METHOD_NONE)
CONV_CLASS_NAMES = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose")


@dataclass(frozen=True)
class GradCamResult:
    """probabilities: float32 (n,) raw model output; heatmaps: float32 (n, h, w) in [0, 1] at the
    model's input resolution; methods: one of METHODS per image; layer: 'outer/inner' path."""

    probabilities: np.ndarray
    heatmaps: np.ndarray
    methods: tuple[str, ...]
    layer: str


# ----------------------------------------------------------------------------- layer search


def _is_container(layer: Any) -> bool:
    return hasattr(layer, "layers") and bool(getattr(layer, "layers", None))


def _is_conv(layer: Any) -> bool:
    return any(cls.__name__ in CONV_CLASS_NAMES for cls in type(layer).__mro__)


def _has_4d_output(layer: Any) -> bool:
    try:
        return len(layer.output.shape) == 4
    except (AttributeError, ValueError):
        return False


def find_last_conv_layer(model: Any) -> list[str]:
    """Path of layer names to the last convolutional layer, descending into nested models."""
    for layer in reversed(model.layers):
        if _is_container(layer):
            try:
                return [layer.name, *find_last_conv_layer(layer)]
            except ValueError:
                continue
        if _is_conv(layer) and _has_4d_output(layer):
            return [layer.name]
    raise ValueError(f"Model '{model.name}' has no convolutional layer for Grad-CAM.")


def resolve_layer_path(model: Any, layer_name: str | None) -> list[str]:
    """'backbone/Conv_1', 'Conv_1' (searched at any depth) or None (automatic)."""
    if not layer_name:
        return find_last_conv_layer(model)
    if "/" in layer_name:
        path = layer_name.split("/")
        _layer_at(model, path)  # raises ValueError with a clear message if absent
        return path
    found = _search_layer(model, layer_name)
    if found is None:
        raise ValueError(f"Grad-CAM layer '{layer_name}' not found in model '{model.name}'.")
    return found


def _search_layer(model: Any, name: str) -> list[str] | None:
    for layer in model.layers:
        if layer.name == name:
            return [name]
        if _is_container(layer):
            inner = _search_layer(layer, name)
            if inner:
                return [layer.name, *inner]
    return None


def _layer_at(model: Any, path: list[str]) -> Any:
    current = model
    for name in path:
        try:
            current = current.get_layer(name)
        except ValueError:
            raise ValueError(
                f"Grad-CAM layer '{'/'.join(path)}' not found in model '{model.name}'."
            ) from None
    return current


# ----------------------------------------------------------------------------- graph building


def build_feature_score_model(model: Any, path: list[str], *, pre_activation: bool) -> Any:
    """A new functional model sharing `model`'s layers: input -> [features at path, score].

    With pre_activation, 'score' is the input of the final sigmoid Dense layer, so the caller can
    form the logit itself (sigmoid saturation would otherwise zero the gradient)."""
    import keras

    features_holder: list[Any] = []
    inner_name = path[0]
    if len(path) > 1:
        inner = model.get_layer(inner_name)
        inner_fs = build_feature_score_model(inner, path[1:], pre_activation=False)
    else:
        inner, inner_fs = None, None

    final_layer = model.layers[-1]
    head_input_holder: list[Any] = []

    def operation_fn(operation: Any) -> Any:
        if inner is not None and operation is inner:
            def call_nested(*args: Any, **kwargs: Any) -> Any:
                feats, out = inner_fs(*args, **kwargs)
                features_holder.append(feats)
                return out
            return call_nested
        if inner is None and getattr(operation, "name", None) == inner_name:
            def call_target(*args: Any, **kwargs: Any) -> Any:
                out = operation(*args, **kwargs)
                features_holder.append(out)
                return out
            return call_target
        if pre_activation and operation is final_layer:
            def call_final(*args: Any, **kwargs: Any) -> Any:
                head_input_holder.append(args[0])
                return operation(*args, **kwargs)
            return call_final
        return operation

    functional = getattr(model, "_functional", None) or model  # Sequential wraps a Functional
    new_inputs = [keras.Input(shape=t.shape[1:], dtype=t.dtype) for t in functional.inputs]
    outputs = functional._run_through_graph(new_inputs, operation_fn=operation_fn)
    if isinstance(outputs, list | tuple):
        outputs = outputs[0]
    if not features_holder:
        raise ValueError(f"Grad-CAM layer '{'/'.join(path)}' is not on the path to the output.")
    score = head_input_holder[0] if (pre_activation and head_input_holder) else outputs
    return keras.Model(new_inputs[0] if len(new_inputs) == 1 else new_inputs,
                       [features_holder[0], score], name=f"{model.name}_gradcam")


def _final_sigmoid_dense(model: Any) -> Any | None:
    import keras

    last = model.layers[-1]
    if isinstance(last, keras.layers.Dense) and getattr(last.activation, "__name__", "") == "sigmoid":
        return last
    return None


# ----------------------------------------------------------------------------- Grad-CAM


class GradCam:
    """Prediction + heatmap in one compiled call. Thread-safe for inference; never mutates model."""

    def __init__(self, model: Any, *, layer: str | None = None, method: str = "auto") -> None:
        import tensorflow as tf

        if method not in ("auto", METHOD_GRADCAM, METHOD_ACTIVATION):
            raise ValueError(f"unknown Grad-CAM method {method!r}")
        self.model = model
        self.path = resolve_layer_path(model, layer)
        self.layer = "/".join(self.path)
        self.method = method
        self._final = _final_sigmoid_dense(model)
        self._fs_model = build_feature_score_model(
            model, self.path, pre_activation=self._final is not None
        )
        height, width = model.input_shape[1:3]
        self.input_size = (int(height), int(width))
        spec = tf.TensorSpec([None, height, width, model.input_shape[3]], tf.float32)
        self._compiled = tf.function(self._step, input_signature=[spec], reduce_retracing=True)

    def _step(self, images: Any) -> tuple[Any, Any, Any]:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            features, score = self._fs_model(images, training=False)
            tape.watch(features)
            if self._final is not None:
                logit = tf.matmul(score, self._final.kernel) + self._final.bias
                probability = tf.sigmoid(logit)[:, 0]
                target = logit[:, 0]
            else:
                probability = tf.reshape(score, [tf.shape(score)[0], -1])[:, -1]
                target = probability
        gradients = None if self.method == METHOD_ACTIVATION else tape.gradient(target, features)
        activation = _normalise(tf.reduce_mean(tf.abs(features), axis=-1))
        if gradients is None:
            if self.method == METHOD_GRADCAM:
                raise ValueError("Gradients are unavailable for this model; Grad-CAM impossible.")
            cam = activation
            codes = tf.ones_like(probability, dtype=tf.int32)
        else:
            weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
            cam = _normalise(tf.nn.relu(tf.reduce_sum(weights * features, axis=-1)))
            empty = tf.reduce_max(cam, axis=(1, 2)) <= 0.0
            if self.method == METHOD_GRADCAM:
                codes = tf.zeros_like(probability, dtype=tf.int32)
            else:
                cam = tf.where(empty[:, None, None], activation, cam)
                codes = tf.cast(empty, tf.int32)
        nothing = tf.reduce_max(cam, axis=(1, 2)) <= 0.0
        codes = tf.where(nothing, 2, codes)
        # Bicubic keeps a coarse (e.g. 4x4) map from looking like a grid of diamonds.
        cam = tf.image.resize(cam[..., None], self.input_size, method="bicubic")[..., 0]
        return probability, tf.clip_by_value(cam, 0.0, 1.0), codes

    def __call__(self, images: np.ndarray) -> GradCamResult:
        probability, cams, codes = self._compiled(np.asarray(images, dtype=np.float32))
        methods = tuple(METHODS[int(c)] for c in codes.numpy())
        for m in methods:
            if m != METHOD_GRADCAM:
                log.info("Grad-CAM fell back to %s for layer %s", m, self.layer)
                break
        return GradCamResult(
            probabilities=probability.numpy().astype(np.float32),
            heatmaps=cams.numpy().astype(np.float32),
            methods=methods,
            layer=self.layer,
        )


def _normalise(maps: Any) -> Any:
    """Per-image min-max scale to [0, 1] (as pytorch-grad-cam does).

    Dividing by the peak alone paints the whole film red whenever every cell contributes a
    little (common with a 4x4 map and a pooled head); min-max shows where it contributes most.
    A flat map becomes all zero (no division by zero) and is treated as empty.
    """
    import tensorflow as tf

    low = tf.reduce_min(maps, axis=(1, 2), keepdims=True)
    high = tf.reduce_max(maps, axis=(1, 2), keepdims=True)
    return tf.math.divide_no_nan(maps - low, high - low)
