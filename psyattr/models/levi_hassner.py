"""Levi & Hassner's age and gender ConvNets (CVPR-W 2015) as Keras functional models."""

from __future__ import annotations

import os
from collections.abc import Sequence

import keras

from psyattr.models.layers import LEVI_HASSNER_BGR_MEAN, CaffeLRN, CaffePreprocess

INPUT_SIZE = 227
INPUT_SHAPE = (INPUT_SIZE, INPUT_SIZE, 3)

# Adience age groups, in the order of the age net's 8 outputs.
AGE_GROUPS = ("0-2", "4-6", "8-12", "15-20", "25-32", "38-43", "48-53", "60-100")
GENDERS = ("male", "female")
# Midpoints (years) of the age groups, for an expected age: the sum of each group's probability times its midpoint.
AGE_GROUP_MIDPOINTS = tuple((float(low) + float(high)) / 2 for low, high in (g.split("-") for g in AGE_GROUPS))
CLASS_NAMES = {"age": AGE_GROUPS, "gender": GENDERS}
TASKS = tuple(CLASS_NAMES)

# fc6 sees the 7x7x384 output of pool5: Caffe's ceil-mode pooling gives 227 -> 56 -> 28 -> 14 -> 7.
FC6_INPUTS = 7 * 7 * 384


def check_task(task: str) -> str:
    """Return `task` if it names a base net, else raise a ValueError listing the known tasks."""
    if task not in CLASS_NAMES:
        raise ValueError(f"unknown task {task!r}: expected one of {', '.join(repr(t) for t in TASKS)}")
    return task


def _conv_block(x, filters: int, kernel: int, name: str, strides: int = 1, padding: str = "same"):
    x = keras.layers.Conv2D(filters, kernel, strides=strides, padding=padding, name=f"conv{name}")(x)
    return keras.layers.ReLU(name=f"relu{name}")(x)


def _dense_block(x, units: int, index: int, dropout: float):
    x = keras.layers.Dense(units, name=f"fc{index}")(x)
    x = keras.layers.ReLU(name=f"relu{index}")(x)
    return keras.layers.Dropout(dropout, name=f"drop{index}")(x)


def build_features(
    inputs: keras.KerasTensor, bgr_mean: Sequence[float] = LEVI_HASSNER_BGR_MEAN, framing: dict | None = None
) -> keras.KerasTensor:
    """Apply Caffe preprocessing and conv1..pool5 to RGB 0..255 `inputs`; return the flattened pool5."""
    x = CaffePreprocess(bgr_mean, framing, name="data")(inputs)
    # Caffe pools with ceil rounding; "same" padding reproduces its windows for 56, 28 and 14.
    x = _conv_block(x, 96, 7, "1", strides=4, padding="valid")
    x = keras.layers.MaxPooling2D(3, 2, padding="same", name="pool1")(x)
    x = CaffeLRN(5, 1e-4, 0.75, name="norm1")(x)
    x = _conv_block(x, 256, 5, "2")
    x = keras.layers.MaxPooling2D(3, 2, padding="same", name="pool2")(x)
    x = CaffeLRN(5, 1e-4, 0.75, name="norm2")(x)
    x = _conv_block(x, 384, 3, "3")
    x = keras.layers.MaxPooling2D(3, 2, padding="same", name="pool5")(x)
    return keras.layers.Flatten(name="flatten")(x)


def build_dense(x: keras.KerasTensor, dropout: float = 0.5) -> keras.KerasTensor:
    """Apply fc6/relu6/drop6/fc7/relu7/drop7 to the flattened features."""
    x = _dense_block(x, 512, 6, dropout)
    return _dense_block(x, 512, 7, dropout)


def build_levi_hassner(
    num_classes: int,
    name: str = "levi_hassner",
    bgr_mean: Sequence[float] = LEVI_HASSNER_BGR_MEAN,
    dropout: float = 0.5,
    framing: dict | None = None,
) -> keras.Model:
    """Build the Levi-Hassner architecture with `num_classes` outputs: logits at `fc8`, softmax `prob`."""
    inputs = keras.Input(INPUT_SHAPE, name="image")
    x = build_dense(build_features(inputs, bgr_mean, framing), dropout)
    logits = keras.layers.Dense(num_classes, name="fc8")(x)
    # The softmax stays float32 under mixed precision so that the loss is computed stably.
    prob = keras.layers.Softmax(name="prob", dtype="float32")(logits)
    return keras.Model(inputs, prob, name=name)


def build_base_model(task: str, weights: str | os.PathLike | None = None, framing: dict | None = None) -> keras.Model:
    """Build the age (8 groups) or gender (2 classes) net; `weights` is a preset name or a weights file.

    The net records `framing` (a framing's JSON dict); by default the one its weights were trained on, as the
    preset or the `.keras` file says (None for a new net or weights that do not say).
    """
    check_task(task)
    if framing is None and weights is not None:
        from psyattr.models.weights import weights_framing

        framing = weights_framing(weights, task)
    model = build_levi_hassner(len(CLASS_NAMES[task]), name=f"{task}_net", framing=framing)
    if weights is not None:
        from psyattr.models.weights import load_weights_into

        load_weights_into(model, weights, task=task)
    return model
