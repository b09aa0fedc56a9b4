"""Layer groups of the Levi-Hassner nets and freezing them in a way that cannot leave a stale compile."""

from __future__ import annotations

from collections.abc import Iterable

import keras

FEATURES = ("data", "conv1", "relu1", "pool1", "norm1", "conv2", "relu2", "pool2", "norm2", "conv3", "relu3",
            "pool5", "flatten")
DENSE = ("fc6", "relu6", "drop6", "fc7", "relu7", "drop7")
GROUPS = ("features", "dense", "head")


def layer_group(layer_name: str) -> str:
    """The group of a layer: `features` (conv1..pool5), `dense` (fc6, fc7) or `head` (fc8 or an attribute head)."""
    if layer_name in FEATURES:
        return "features"
    if layer_name in DENSE:
        return "dense"
    return "head"


def _check_groups(groups: Iterable[str]) -> set[str]:
    groups = {groups} if isinstance(groups, str) else set(groups)
    unknown = groups - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown layer group(s) {sorted(unknown)}: expected some of {', '.join(GROUPS)}")
    return groups


def group_layers(model: keras.Model, group: str) -> list[keras.layers.Layer]:
    """The layers of `model` in `group`, in model order."""
    _check_groups([group])
    return [layer for layer in model.layers
            if layer_group(layer.name) == group and not isinstance(layer, keras.layers.InputLayer)]


def trainable_groups(model: keras.Model) -> set[str]:
    """The groups whose weighted layers are all trainable."""
    found = set()
    for group in GROUPS:
        weighted = [layer for layer in group_layers(model, group) if layer.weights]
        if weighted and all(layer.trainable for layer in weighted):
            found.add(group)
    return found


def set_trainable_groups(model: keras.Model, groups: Iterable[str]) -> keras.Model:
    """Train exactly `groups` (others frozen); a compiled model is recompiled at once with its own settings.

    Keras 3 only notices `trainable` changes when the model is compiled again, so this recompiles from
    the model's compile config: the optimizer restarts from its configuration (its slots are rebuilt
    for the new set of trainable weights).
    """
    wanted = _check_groups(groups)
    compile_config = model.get_compile_config() if model.compiled else None
    model.trainable = True
    for layer in model.layers:
        if not isinstance(layer, keras.layers.InputLayer):
            layer.trainable = layer_group(layer.name) in wanted
    if compile_config is not None:
        model.compile_from_config(compile_config)
    return model


def freeze(model: keras.Model, *groups: str) -> keras.Model:
    """Freeze `groups` and train every other group (recompiling if the model was compiled)."""
    return set_trainable_groups(model, set(GROUPS) - _check_groups(groups))


def unfreeze(model: keras.Model, *groups: str) -> keras.Model:
    """Make `groups` trainable too, keeping the other groups as they are (recompiling if compiled)."""
    return set_trainable_groups(model, trainable_groups(model) | _check_groups(groups))
