"""Grad-CAM computed in the same forward pass as the prediction.

`GradCam` wraps a trained Keras model without touching it: it builds a second functional graph
that *shares* the model's layers and weights and outputs the target feature maps, the pooled head
features and the score. One compiled call (tf.function) runs the forward pass under a
GradientTape and differentiates the positive-class logit with respect to the feature maps; the
gradient only runs back through the head, so the whole call costs about one forward pass.

Which feature maps. A registry `gradcam_layer` ("backbone/layer" or just the layer name), else the
layer measured for the backbone (MEASURED_LAYERS: MobileNetV2's `block_13_expand_relu`, 8x8 at
128 px instead of 4x4, chosen on validation images), else the maps the head's
GlobalAveragePooling2D reads (DenseNet121's `relu`): Grad-CAM's weights are the pooled gradients
of exactly these maps, and the head's BatchNorm holds their population mean. Models without a
pooling layer use their last convolutional layer. bench/pointing_game.py measures the layers.

Why the reference. RadTriage's head is GAP -> BatchNorm -> Dense+ReLU -> Dropout -> Dense. The
BatchNorm subtracts its moving mean mu from the pooled features, so the evidence a location adds
to the logit is sum_k w_k (A_k(x, y) - mu_k), not sum_k w_k A_k: when the evidence is "less of
channel k than the average film", plain Grad-CAM is negative everywhere and the map came out
empty (19% of the pneumonia model's confident positives at its pre-BN `Conv_1`, falling back to an
activation map). At the pooled maps the map is measured against mu; at other depths no
population reference is known and plain Grad-CAM is used. At every depth the pattern that
position alone produces (a blank film's maps, zero-mean per channel: padding artefacts at the
edges and corners) is subtracted too, so a map shows what differs in THIS film.

If gradients are unavailable (a graph that hides them) or the Grad-CAM map is still empty, an
activation map (mean absolute activation) is returned instead, and the method says so. A map is
always returned.
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
    model's input resolution; methods: one of METHODS per image; layer: 'outer/inner' path;
    pooled: float32 (n, d) the GlobalAveragePooling2D output feeding the head (the spatial mean
    of the last conv layer's output for a model without one), from the same forward pass."""

    probabilities: np.ndarray
    heatmaps: np.ndarray
    methods: tuple[str, ...]
    layer: str
    pooled: np.ndarray


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


def find_pooling_layer(model: Any) -> Any | None:
    """The top-level GlobalAveragePooling2D whose output feeds the head, or None."""
    import keras

    pools = [layer for layer in model.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D)]
    return pools[-1] if pools else None


def find_head_batchnorm(model: Any, pooling: Any) -> Any | None:
    """The BatchNormalization applied directly to the pooled features (the paper's head_bn)."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization) and layer.input is pooling.output:
            return layer
    return None


def pooled_maps_path(model: Any, pooling: Any) -> list[str]:
    """Path to the layer whose output the pooling layer reads, descending into a backbone."""
    path: list[str] = []
    operation = pooling.input._keras_history.operation
    while _is_container(operation):
        path.append(operation.name)
        operation = operation.output._keras_history.operation
    return [*path, operation.name]


# Grad-CAM layer per backbone (the nested model's name in core.architectures), chosen on
# VALIDATION images (bench/pointing_game.py). A registry `gradcam_layer` still wins.
MEASURED_LAYERS: dict[str, str] = {
    # 8x8 at 128 px, 14x14 at 224 px, instead of the pooled 4x4 / 7x7 out_relu. On the fracture
    # val boxes no MobileNetV2 layer beat another beyond chance (the fracture model does not
    # localise: 2-6% hits, centre 6%); on val positives of the four 128 px models it kept the
    # heat off the image border (outer band, 44% of the area: pneumonia 0.46 -> 0.23,
    # cardiomegaly 0.34 -> 0.15, knee OA 0.51 -> 0.43, fracture 0.39 -> 0.50) with no
    # activation-map fallback on any confident positive.
    "mobilenetv2": "block_13_expand_relu",
}


def default_layer_path(model: Any) -> list[str]:
    """The measured layer of a known backbone; else the maps the head pools (where the BN
    reference lives); else the last conv layer."""
    for layer in model.layers:
        if _is_container(layer) and layer.name in MEASURED_LAYERS:
            path = [layer.name, MEASURED_LAYERS[layer.name]]
            if _search_layer(layer, path[1]) == path[1:]:
                return path
    pooling = find_pooling_layer(model)
    if pooling is not None and len(pooling.input.shape) == 4:
        return pooled_maps_path(model, pooling)
    return find_last_conv_layer(model)


def resolve_layer_path(model: Any, layer_name: str | None) -> list[str]:
    """'backbone/Conv_1', 'Conv_1' (searched at any depth) or None (default_layer_path)."""
    if not layer_name:
        return default_layer_path(model)
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


def build_tap_model(model: Any, paths: list[list[str]], *, pre_activation: bool) -> Any:
    """A new functional model sharing `model`'s layers: input -> [output at each path..., score].

    With pre_activation, 'score' is the input of the final sigmoid Dense layer, so the caller can
    form the logit itself (sigmoid saturation would otherwise zero the gradient). Nested models
    are re-run through their own tap model, so a path like ['mobilenetv2', 'block_13_add'] works
    without touching the original graph."""
    import keras

    taps: dict[int, Any] = {}
    nested: dict[str, tuple[Any, list[int]]] = {}
    for name in {p[0] for p in paths if len(p) > 1}:
        indices = [i for i, p in enumerate(paths) if len(p) > 1 and p[0] == name]
        inner = build_tap_model(model.get_layer(name), [paths[i][1:] for i in indices], pre_activation=False)
        nested[name] = (inner, indices)
    direct: dict[str, list[int]] = {}
    for i, p in enumerate(paths):
        if len(p) == 1:
            direct.setdefault(p[0], []).append(i)
    final_layer = model.layers[-1]
    head_input_holder: list[Any] = []

    def operation_fn(operation: Any) -> Any:
        name = getattr(operation, "name", None)
        if name in nested:
            inner, indices = nested[name]

            def call_nested(*args: Any, **kwargs: Any) -> Any:
                *inner_taps, out = inner(*args, **kwargs)
                taps.update(zip(indices, inner_taps, strict=True))
                return out

            return call_nested
        if name in direct:

            def call_tapped(*args: Any, **kwargs: Any) -> Any:
                out = operation(*args, **kwargs)
                taps.update(dict.fromkeys(direct[name], out))
                return out

            return call_tapped
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
    missing = [i for i in range(len(paths)) if i not in taps]
    if missing:
        raise ValueError(f"Grad-CAM layer '{'/'.join(paths[missing[0]])}' is not on the path to the output.")
    score = head_input_holder[0] if (pre_activation and head_input_holder) else outputs
    return keras.Model(
        new_inputs[0] if len(new_inputs) == 1 else new_inputs,
        [*(taps[i] for i in range(len(paths))), score],
        name=f"{model.name}_gradcam",
    )


def _final_sigmoid_dense(model: Any) -> Any | None:
    import keras

    last = model.layers[-1]
    if isinstance(last, keras.layers.Dense) and getattr(last.activation, "__name__", "") == "sigmoid":
        return last
    return None


# ----------------------------------------------------------------------------- Grad-CAM


class GradCam:
    """Prediction + heatmap in one compiled call. Thread-safe for inference; never mutates model."""

    def __init__(
        self, model: Any, *, layer: str | None = None, method: str = "auto", position_reference: bool = True
    ) -> None:
        import tensorflow as tf

        if method not in ("auto", METHOD_GRADCAM, METHOD_ACTIVATION):
            raise ValueError(f"unknown Grad-CAM method {method!r}")
        self.model = model
        self.path = resolve_layer_path(model, layer)
        self.layer = "/".join(self.path)
        self.method = method
        self._final = _final_sigmoid_dense(model)
        pooling = find_pooling_layer(model)
        # The pooled features: the GAP output itself, else the last conv maps (meaned below).
        self._pools_maps = pooling is None
        pooled_path = find_last_conv_layer(model) if pooling is None else [pooling.name]
        self._fs_model = build_tap_model(
            model, [self.path, pooled_path], pre_activation=self._final is not None
        )
        height, width, channels = model.input_shape[1:4]
        self.input_size = (int(height), int(width))
        self._level = self._population_level(model, pooling)
        self._pattern = self._position_pattern(channels) if position_reference else None
        spec = tf.TensorSpec([None, height, width, channels], tf.float32)
        self._compiled = tf.function(self._step, input_signature=[spec], reduce_retracing=True)

    def _population_level(self, model: Any, pooling: Any | None) -> Any | None:
        """The head BN's moving mean when the target maps are the ones it normalises (pooled)."""
        if pooling is None or self.path != pooled_maps_path(model, pooling):
            return None
        head_bn = find_head_batchnorm(model, pooling)
        return None if head_bn is None else head_bn.moving_mean  # read live, never assigned

    def _position_pattern(self, channels: int) -> np.ndarray:
        """What position alone does to the target maps: a blank (black) film's maps minus their
        spatial mean, float32 (1, h, w, k).

        Zero padding and the stride-2 layers' one-sided padding give every film the same
        hot corners and edges (the knee OA maps were hottest in the top-left corner on every
        film, the joint space cold). Such a pattern cannot tell one film from another, so it
        is not evidence about this film; subtracting it leaves each channel's spatial mean, and
        so the evidence summed over the map, unchanged."""
        blank = np.zeros((1, *self.input_size, int(channels)), np.float32)
        features = np.asarray(self._fs_model(blank, training=False)[0], np.float32)
        return features - features.mean(axis=(1, 2), keepdims=True)

    def _step(self, images: Any) -> tuple[Any, Any, Any, Any]:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            features, pooled, score = self._fs_model(images, training=False)
            tape.watch(features)
            if self._final is not None:
                logit = tf.matmul(score, self._final.kernel) + self._final.bias
                probability = tf.sigmoid(logit)[:, 0]
                target = logit[:, 0]
            else:
                probability = tf.reshape(score, [tf.shape(score)[0], -1])[:, -1]
                target = probability
        if self._pools_maps:
            pooled = tf.reduce_mean(pooled, axis=(1, 2))
        gradients = None if self.method == METHOD_ACTIVATION else tape.gradient(target, features)
        activation = _normalise(tf.reduce_mean(tf.abs(features), axis=-1))
        if gradients is None:
            if self.method == METHOD_GRADCAM:
                raise ValueError("Gradients are unavailable for this model; Grad-CAM impossible.")
            cam = activation
            codes = tf.ones_like(probability, dtype=tf.int32)
        else:
            weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
            evidence = features
            if self._level is not None:
                evidence = evidence - tf.cast(self._level, features.dtype)
            if self._pattern is not None:
                evidence = evidence - self._pattern
            cam = _normalise(tf.nn.relu(tf.reduce_sum(weights * evidence, axis=-1)))
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
        return probability, tf.clip_by_value(cam, 0.0, 1.0), codes, pooled

    def __call__(self, images: np.ndarray) -> GradCamResult:
        probability, cams, codes, pooled = self._compiled(np.asarray(images, dtype=np.float32))
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
            pooled=pooled.numpy().astype(np.float32),
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
