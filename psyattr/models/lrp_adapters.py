"""The LRP adapters of the Levi-Hassner nets' own layers (registered when `psyattr.models` is imported)."""

from __future__ import annotations

import numpy as np

from psyattr.lrp.adapters import LayerAdapter, register_adapter
from psyattr.lrp.rules import GradientFlow, Identity
from psyattr.models.layers import CaffeLRN, CaffePreprocess, RootFeatures


def _preprocess_bounds(layer: CaffePreprocess, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # RGB to BGR, minus the BGR means: 0..255 pixels become -mean..255 - mean per BGR channel.
    mean = np.asarray(layer.bgr_mean, np.float64)
    return np.broadcast_to(low, 3)[::-1] - mean, np.broadcast_to(high, 3)[::-1] - mean


register_adapter(LayerAdapter(CaffeLRN, Identity(), sign_preserving=True,
                              description="Caffe's LRN, treated as the identity (as the Caffe LRP toolbox does)"))
register_adapter(LayerAdapter(CaffePreprocess, GradientFlow(), bounds=_preprocess_bounds,
                              description="Caffe's preprocessing: relevance flows back to the RGB pixels"))
register_adapter(LayerAdapter(RootFeatures, Identity(), sign_preserving=True,
                              description="the ridge head's root scaling: element-wise and monotone, relevance passes"))
