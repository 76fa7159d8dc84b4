"""Model architectures: the paper's two families plus the placeholder CNN.

Every model takes float32 RGB in [0, 1] (the paper's X/255) of shape (batch, H, W, 3) and
outputs one sigmoid probability. Backbone-specific input scaling lives inside the model, so
training and serving cannot disagree about it. The backbone is a nested keras.Model, as in
transfer learning; core.gradcam knows how to look inside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "mobilenetv2": {"family": "fast", "input_size": (128, 128), "backbone_name": "mobilenetv2"},
    "densenet121": {"family": "intensive", "input_size": (224, 224), "backbone_name": "densenet121"},
    "placeholder": {"family": "placeholder", "input_size": (128, 128), "backbone_name": None},
    # A model built elsewhere and registered by an admin: served as-is, input size from its entry.
    "custom": {"family": "custom", "input_size": None, "backbone_name": None},
}

# ImageNet statistics for DenseNet's "torch" preprocessing (inputs already in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_model(
    architecture: str,
    *,
    input_size: Sequence[int] | None = None,
    imagenet_weights: str | Path | None = None,
    dense_units: Sequence[int] = (256,),
    dropout: float = 0.3,
    seed: int | None = None,
) -> Any:
    """Backbone + the paper's head: GAP, BatchNorm, Dense+ReLU..., Dropout, Dense(1, sigmoid).

    imagenet_weights: path to a local no-top weights file (never downloaded: None = random).
    """
    import keras

    if architecture not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture '{architecture}'; choose one of {', '.join(ARCHITECTURES)}.")
    if architecture == "custom":
        raise ValueError("'custom' models are registered from a file, not built here.")
    if architecture == "placeholder":
        return build_placeholder(input_size=input_size or ARCHITECTURES["placeholder"]["input_size"])
    if seed is not None:
        keras.utils.set_random_seed(seed)
    height, width = tuple(input_size or ARCHITECTURES[architecture]["input_size"])
    weights = _local_weights(imagenet_weights)

    inputs = keras.Input(shape=(height, width, 3), name="image")
    if architecture == "mobilenetv2":
        # MobileNetV2 ImageNet weights expect [-1, 1].
        x = keras.layers.Rescaling(2.0, offset=-1.0, name="to_minus1_1")(inputs)
        backbone = keras.applications.MobileNetV2(
            input_shape=(height, width, 3), alpha=1.0, include_top=False, weights=weights
        )
    else:
        x = keras.layers.Normalization(
            mean=list(IMAGENET_MEAN), variance=[s * s for s in IMAGENET_STD], name="imagenet_norm"
        )(inputs)
        backbone = keras.applications.DenseNet121(
            input_shape=(height, width, 3), include_top=False, weights=weights
        )
    backbone.name = ARCHITECTURES[architecture]["backbone_name"]
    x = backbone(x)
    outputs = paper_head(x, dense_units=dense_units, dropout=dropout)
    return keras.Model(inputs, outputs, name=f"{architecture}_{height}")


def paper_head(features: Any, *, dense_units: Sequence[int], dropout: float) -> Any:
    import keras

    x = keras.layers.GlobalAveragePooling2D(name="gap")(features)
    x = keras.layers.BatchNormalization(name="head_bn")(x)
    for i, units in enumerate(dense_units):
        x = keras.layers.Dense(units, activation="relu", name=f"head_dense_{i}")(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    return keras.layers.Dense(1, activation="sigmoid", name="probability")(x)


def build_placeholder(*, input_size: Sequence[int]) -> Any:
    """A small untrained CNN used when a real model cannot be loaded.

    Its outputs are meaningless by construction: callers must flag them (is_placeholder).
    Fixed seed so the same input gives the same (meaningless) number every time.
    """
    import keras

    height, width = tuple(input_size)
    init = keras.initializers.GlorotUniform(seed=7)
    inputs = keras.Input(shape=(height, width, 3), name="image")
    x = keras.layers.Conv2D(
        8, 3, strides=2, activation="relu", kernel_initializer=init, name="placeholder_conv1"
    )(inputs)
    x = keras.layers.Conv2D(
        16, 3, strides=2, activation="relu", kernel_initializer=init, name="placeholder_conv2"
    )(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=init, name="probability")(x)
    return keras.Model(inputs, outputs, name="placeholder_cnn")


def _local_weights(path: str | Path | None) -> str | None:
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"ImageNet weights file not found: {p}. Pass a local no-top .h5 file "
            "(RadTriage never downloads weights)."
        )
    return str(p)
