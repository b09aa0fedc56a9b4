"""Attribute regressors: a Levi-Hassner base net with fc8 replaced by a head of named scores in [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from psyattr.models.groups import set_trainable_groups
from psyattr.models.layers import AttributeScores, CaffePreprocess, RootFeatures
from psyattr.models.levi_hassner import INPUT_SHAPE, build_dense, build_features

MODES = ("dense", "full", "ridge")


def check_mode(mode: str) -> str:
    """Return `mode` if it is a fine-tuning mode, else raise a ValueError naming them."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: expected 'dense' (features frozen), 'full' (whole net) or 'ridge' "
                         "(a linear head on the frozen pool5 features)")
    return mode


def build_attribute_regressor(
    base: keras.Model,
    attributes: Sequence[str],
    scales: Sequence[tuple[float, float]],
    mode: str = "dense",
    initial_scores: Sequence[float] | None = None,
    name: str | None = None,
    framing: dict | None = None,
    dropout: float = 0.5,
) -> keras.Model:
    """A new model with the base net's conv1..fc7 weights and a fresh `fc8` head scoring `attributes`.

    `scales` gives each attribute's rating scale (low, high); `initial_scores` (in [0, 1], e.g. the
    training means) starts the head at those values. `mode` "dense" freezes the features group; "ridge" drops
    fc6 and fc7 and puts the head on the root-scaled pool5 features (`RootFeatures`), for a closed-form fit.
    `framing` (a framing record) is what the regressor's photos are framed by: by default the base net's.
    `dropout` is the rate of drop6 and drop7 in training (Levi & Hassner's 0.5).
    """
    check_mode(mode)
    if not attributes:
        raise ValueError("give at least one attribute")
    if len(scales) != len(attributes):
        raise ValueError(f"got {len(scales)} scales for {len(attributes)} attributes")
    preprocess = base.get_layer("data")
    if not isinstance(preprocess, CaffePreprocess):
        raise ValueError(f"{base.name} is not a Levi-Hassner base net (no CaffePreprocess layer 'data')")
    inputs = keras.Input(INPUT_SHAPE, name="image")
    features = build_features(inputs, preprocess.bgr_mean, framing if framing is not None else preprocess.framing)
    x = RootFeatures(name="root")(features) if mode == "ridge" else build_dense(features, dropout)
    # A zero kernel makes the new head start as the predict-the-mean baseline (with `initial_scores`): fine-tuning
    # then begins from the best constant guess instead of from large random errors pushed into the features.
    head = keras.layers.Dense(len(attributes), name="fc8", kernel_initializer="zeros")
    scores = AttributeScores(list(attributes), [s[0] for s in scales], [s[1] for s in scales], name="scores")(head(x))
    model = keras.Model(inputs, scores, name=name or f"{base.name.removesuffix('_net')}_{'_'.join(attributes)}_{mode}")
    for layer in model.layers:
        if layer.weights and layer.name != "fc8":
            layer.set_weights(base.get_layer(layer.name).get_weights())
    if initial_scores is not None:
        kernel, _ = head.get_weights()
        head.set_weights([kernel, np.asarray(initial_scores, dtype="float32")])
    set_trainable_groups(model, {"dense": ["dense", "head"], "ridge": ["head"]}.get(mode, ["features", "dense", "head"]))
    return model


def attribute_scores_layer(model: keras.Model) -> AttributeScores:
    """The model's `AttributeScores` layer, or a ValueError if it is not an attribute regressor."""
    for layer in reversed(model.layers):
        if isinstance(layer, AttributeScores):
            return layer
    raise ValueError(f"{model.name} is not an attribute regressor (it has no AttributeScores layer)")
