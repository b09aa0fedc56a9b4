"""Model adapters: what a model family tells the LRP engine about its own layer types.

The engine knows Keras' layers. A family with layers of its own (psyattr's Levi-Hassner nets: Caffe's LRN
and preprocessing) registers an adapter per type: the treatment its relevance gets, whether it keeps inputs
non-negative, and how the input's pixel bounds cross it (for z^B on the first layer). This is the part of
zennit's canonizers a Keras model needs; `psyattr.models` registers its adapters when it is imported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from psyattr.lrp.rules import Treatment

Bounds = tuple[np.ndarray, np.ndarray]


@dataclasses.dataclass(frozen=True)
class LayerAdapter:
    """How the engine treats layers of `layer_type`.

    `bounds(layer, low, high)` maps per-channel pixel bounds of the layer's input to those of its output;
    `sign_preserving` says that non-negative inputs give non-negative outputs.
    """

    layer_type: type
    treatment: Treatment
    bounds: Callable[[object, np.ndarray, np.ndarray], Bounds] | None = None
    sign_preserving: bool = False
    description: str = ""


ADAPTERS: list[LayerAdapter] = []


def register_adapter(adapter: LayerAdapter) -> LayerAdapter:
    """Register (or replace) the adapter of a layer type."""
    ADAPTERS[:] = [a for a in ADAPTERS if a.layer_type is not adapter.layer_type]
    ADAPTERS.append(adapter)
    return adapter


def adapter_for(layer) -> LayerAdapter | None:
    """The adapter of `layer`'s type (the most specific registered one), or None."""
    matches = [a for a in ADAPTERS if isinstance(layer, a.layer_type)]
    return max(matches, key=lambda a: len(a.layer_type.__mro__), default=None)


__all__ = ["ADAPTERS", "Bounds", "LayerAdapter", "adapter_for", "register_adapter"]
