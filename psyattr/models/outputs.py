"""Names of a model's outputs: class names of the base nets, attribute names of regressors."""

from __future__ import annotations

import keras

from psyattr.models.levi_hassner import CLASS_NAMES


def output_names(model: keras.Model, count: int) -> list[str]:
    """The names of the `count` outputs of `model` (attribute or class names; indices as text otherwise)."""
    for layer in reversed(model.layers):
        names = getattr(layer, "output_names", None)
        if names and len(names) == count:
            return list(names)
    for task, names in CLASS_NAMES.items():
        if model.name == f"{task}_net" and len(names) == count:
            return list(names)
    return [str(i) for i in range(count)]
