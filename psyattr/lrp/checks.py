"""Layer predicates: which Keras layers take rules, pass relevance on, or end a model."""

from __future__ import annotations

import keras

# Layers that carry weights and take an LRP rule.
LINEAR_LAYERS = (keras.layers.Conv2D, keras.layers.Dense)
# Element-wise layers whose relevance passes unchanged (ReLU: relevance of a zeroed unit is already 0).
ELEMENTWISE_PASS = (keras.layers.ReLU, keras.layers.Dropout, keras.layers.SpatialDropout2D,
                    keras.layers.GaussianDropout, keras.layers.GaussianNoise, keras.layers.AlphaDropout)
# Layers that only move or select values: relevance follows their gradient.
GRADIENT_PASS = (keras.layers.Flatten, keras.layers.Reshape, keras.layers.ZeroPadding2D, keras.layers.Cropping2D,
                 keras.layers.Permute)
# Layers after which non-negative inputs stay non-negative.
SIGN_PRESERVING = (*ELEMENTWISE_PASS, *GRADIENT_PASS, keras.layers.MaxPooling2D)
# Output activations that LRP starts below: the start is the pre-activation value.
OUTPUT_ACTIVATIONS = ("softmax", "sigmoid", "linear")
PASS_ACTIVATIONS = ("relu", "linear")


def activation_name(layer: keras.layers.Layer) -> str | None:
    """The name of a layer's activation function, or None when it has none."""
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None) if activation is not None else None


def is_input_layer(layer: keras.layers.Layer) -> bool:
    """Whether `layer` is a Keras InputLayer."""
    return isinstance(layer, keras.layers.InputLayer)


def is_conv_layer(layer: keras.layers.Layer) -> bool:
    """Whether `layer` is a 2-D convolution."""
    return isinstance(layer, keras.layers.Conv2D)


def is_dense_layer(layer: keras.layers.Layer) -> bool:
    """Whether `layer` is fully connected."""
    return isinstance(layer, keras.layers.Dense)


def is_linear_layer(layer: keras.layers.Layer) -> bool:
    """Whether `layer` takes an LRP rule (Conv2D or Dense)."""
    return isinstance(layer, LINEAR_LAYERS)


def is_output_activation(layer: keras.layers.Layer) -> bool:
    """Whether `layer` only squashes the model's scores (softmax, sigmoid, linear, unit-interval clipping)."""
    if isinstance(layer, keras.layers.Softmax) or getattr(layer, "is_output_activation", False):
        return True
    return isinstance(layer, keras.layers.Activation) and activation_name(layer) in OUTPUT_ACTIVATIONS


def is_elementwise_pass(layer: keras.layers.Layer) -> bool:
    """Whether relevance passes through `layer` unchanged, element by element."""
    if isinstance(layer, keras.layers.ReLU):
        return layer.negative_slope == 0 and layer.threshold == 0
    if isinstance(layer, keras.layers.Activation):
        return activation_name(layer) in PASS_ACTIVATIONS
    return isinstance(layer, ELEMENTWISE_PASS)


def is_gradient_pass(layer: keras.layers.Layer) -> bool:
    """Whether relevance follows `layer`'s gradient (reshapes, flattening, padding, cropping)."""
    return isinstance(layer, GRADIENT_PASS)


def is_max_pool(layer: keras.layers.Layer) -> bool:
    """Whether `layer` is 2-D max-pooling on channels-last data."""
    return isinstance(layer, keras.layers.MaxPooling2D) and layer.data_format == "channels_last"


def is_sum(layer: keras.layers.Layer) -> bool:
    """Whether `layer` adds its inputs."""
    return isinstance(layer, keras.layers.Add)


def is_nonnegative_output(layer: keras.layers.Layer) -> bool:
    """Whether `layer` always outputs values >= 0 (a ReLU, or a linear layer with a fused ReLU)."""
    return isinstance(layer, keras.layers.ReLU) or activation_name(layer) == "relu"
