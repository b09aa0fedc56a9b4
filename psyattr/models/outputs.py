"""Names of a model's outputs: class names of the base nets, attribute names of regressors."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import numpy as np

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


Target = int | str | Sequence[int | str] | np.ndarray | None


def resolve_targets(names: Sequence[str], target: Target, count: int, top_scores: Callable[[], np.ndarray] | None = None,
                    model_name: str = "the model") -> np.ndarray:
    """Per-image output indices from an index, an output name, one per image, or None (each image's top output).

    `top_scores` is called for None only, and returns the outputs `(count, len(names))` to take the top of.
    """
    if target is None:
        if top_scores is None:
            raise ValueError("target=None needs the scores to pick each image's top output")
        return np.argmax(top_scores(), axis=1).astype(np.int32)
    items = [target] * count if isinstance(target, (int, str, np.integer)) else list(target)
    if len(items) != count:
        raise ValueError(f"got {len(items)} targets for {count} images: give one target, or one per image")
    indices = []
    for item in items:
        if isinstance(item, str):
            if item not in names:
                raise ValueError(f"unknown target {item!r}: the outputs of {model_name} are {', '.join(names)}")
            indices.append(list(names).index(item))
        elif isinstance(item, (int, np.integer)) and 0 <= int(item) < len(names):
            indices.append(int(item))
        else:
            raise ValueError(f"target {item!r} is out of range: {model_name} has {len(names)} outputs "
                             f"(0..{len(names) - 1}: {', '.join(names)})")
    return np.asarray(indices, dtype=np.int32)
