"""A model's input and output contract: its output names, the one rule for targets, the one check of images.

Every path that takes a target (the explainers, the exported `explain` signature, the server's validation,
the client, the command line) uses `parse_target`, so that what one accepts the others accept too: an
output name, an index (an int, or text of ASCII digits 0-9), or None / "" for each image's top output.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from psyattr.models.levi_hassner import CLASS_NAMES

Target = int | str | Sequence[int | str] | np.ndarray | None
TOP = -1
"""The target index that stands for each image's top output."""

# What the exported graph accepts as an index written as text (tf.strings.regex_full_match).
INDEX_PATTERN = "[0-9]{1,9}"
_INDEX = re.compile(INDEX_PATTERN)
SHOWN = 64  # characters of a user's input quoted back in an error


def clip(text: str, limit: int = SHOWN) -> str:
    """`text`, or its first `limit` characters and "..." when longer: user input in messages stays short."""
    return text if len(text) <= limit else text[:limit] + "..."


def shown(text: object) -> str:
    """A user's input as quoted in an error message: cut to a short prefix, so that no message echoes a whole input."""
    if not isinstance(text, (str, bytes)):
        return clip(str(text))
    text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return repr(clip(text)) + (f" ({len(text)} characters)" if len(text) > SHOWN else "")


def output_names(model, count: int) -> list[str]:
    """The names of the `count` outputs of `model` (attribute or class names; indices as text otherwise)."""
    for layer in reversed(model.layers):
        names = getattr(layer, "output_names", None)
        if names and len(names) == count:
            return list(names)
    for task, names in CLASS_NAMES.items():
        if model.name == f"{task}_net" and len(names) == count:
            return list(names)
    return [str(i) for i in range(count)]


def parse_target(target: int | str | bytes | np.integer | None, names: Sequence[str],
                 model_name: str = "the model") -> int:
    """One target as an output index, TOP for None or "": a name, an index, or an index written in ASCII digits."""
    if target is None:
        return TOP
    if isinstance(target, bytes):
        try:
            target = target.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"target {shown(target)} is not UTF-8 text") from None
    if isinstance(target, (bool, np.bool_)):
        raise ValueError(f"target {target!r} is not an output name or index")
    if isinstance(target, str):
        if target == "":
            return TOP
        if target in names:
            return list(names).index(target)
        if not _INDEX.fullmatch(target):
            raise ValueError(f"unknown target {shown(target)}: the outputs of {model_name} are {', '.join(names)} "
                             f"(or their index 0..{len(names) - 1}; \"\" for the top output)")
        target = int(target)
    if isinstance(target, (int, np.integer)) and 0 <= int(target) < len(names):
        return int(target)
    raise ValueError(f"target {shown(target)} is out of range: {model_name} has {len(names)} outputs "
                     f"(0..{len(names) - 1}: {', '.join(names)})")


def target_indices(names: Sequence[str], target: Target, count: int, model_name: str = "the model") -> np.ndarray:
    """Per-image output indices from one target or one per image; TOP where an image asks for its top output."""
    if target is None or isinstance(target, (int, str, bytes, np.integer)):
        items = [target] * count
    else:
        items = list(np.asarray(target, dtype=object).ravel()) if isinstance(target, np.ndarray) else list(target)
    if len(items) != count:
        raise ValueError(f"got {len(items)} targets for {count} images: give one target, or one per image")
    return np.asarray([parse_target(item, names, model_name) for item in items], dtype=np.int32)


def resolve_targets(names: Sequence[str], target: Target, count: int, top_scores: Callable[[], np.ndarray] | None = None,
                    model_name: str = "the model") -> np.ndarray:
    """Per-image output indices from one target, one per image, or None (each image's top output).

    `top_scores` is called when some image asks for its top output, and returns the outputs `(count, len(names))`.
    """
    indices = target_indices(names, target, count, model_name)
    if (indices == TOP).any():
        if top_scores is None:
            raise ValueError("the top output can only be found from the scores: give a target")
        indices = np.where(indices == TOP, np.argmax(top_scores(), axis=1), indices).astype(np.int32)
    return indices


def check_images(images, input_shape: Sequence[int] = (227, 227, 3), what: str = "the model") -> np.ndarray:
    """Validate a batch of RGB pixels against `input_shape` and return it as float32, or raise ValueError."""
    input_shape = tuple(int(d) for d in input_shape)
    shape = "(N, " + ", ".join(map(str, input_shape)) + ")"
    array = np.asarray(images)
    if not (np.issubdtype(array.dtype, np.floating) or array.dtype == np.uint8):
        raise ValueError(f"images must be float (or uint8) RGB pixel values 0..255, got dtype {array.dtype}")
    if array.shape == input_shape:
        raise ValueError(f"images must be a batch {shape}, got one image {array.shape}: add a batch axis (images[None])")
    if array.ndim != len(input_shape) + 1 or array.shape[1:] != input_shape:
        raise ValueError(f"images must have shape {shape}, got {array.shape}: RGB pixels 0..255 for {what}")
    if len(array) == 0:
        raise ValueError("images is an empty batch")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise ValueError("images contain NaN or infinite values")
    return array


__all__ = ["INDEX_PATTERN", "TOP", "Target", "check_images", "output_names", "parse_target", "resolve_targets", "shown",
           "target_indices"]
