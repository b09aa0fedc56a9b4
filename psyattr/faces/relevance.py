"""Relevance by face region: how much of a heatmap's relevance each region holds, and how spread out it is."""

from __future__ import annotations

import numpy as np

from psyattr.faces.regions import FaceRegions


def _check_heatmap(heatmap: np.ndarray) -> np.ndarray:
    heatmap = np.asarray(heatmap, np.float64)
    if heatmap.ndim != 2:
        raise ValueError(f"a heatmap must be (H, W) (sum the colour channels first), got shape {heatmap.shape}")
    return heatmap


def region_shares(heatmap: np.ndarray, regions: FaceRegions, absolute: bool = False) -> dict[str, float]:
    """Share of the positive relevance (of |relevance| when `absolute`) of a heatmap `(H, W)` inside each region.

    Shares of overlapping regions (e.g. `mouth` and `face`) overlap; NaN everywhere when there is no relevance.
    """
    heatmap = _check_heatmap(heatmap)
    mass = np.abs(heatmap) if absolute else np.clip(heatmap, 0.0, None)
    total = float(mass.sum())
    shares = {}
    for name, mask in regions.masks.items():
        if mask.shape != heatmap.shape:
            raise ValueError(f"region {name!r} is {mask.shape} but the heatmap is {heatmap.shape}")
        shares[name] = float(mass[mask].sum()) / total if total > 0 else float("nan")
    return shares


def relevance_spread(heatmap: np.ndarray, mass: float = 0.5) -> float:
    """The fraction of pixels that together hold `mass` of the positive relevance, taking the largest first.

    Small means concentrated (0.01: 1 % of the pixels hold half of it); `mass` itself when relevance is
    spread evenly over the image. NaN when there is no positive relevance.
    """
    if not 0.0 < mass <= 1.0:
        raise ValueError(f"mass must lie in (0, 1], got {mass}")
    values = np.sort(np.clip(_check_heatmap(heatmap), 0.0, None).ravel())[::-1]
    total = values.sum()
    if total <= 0:
        return float("nan")
    needed = int(np.searchsorted(np.cumsum(values), mass * total)) + 1
    return min(needed, values.size) / values.size
