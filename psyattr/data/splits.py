"""Seeded splits: stratified train/validation/test for pretraining, half/half for rated faces."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def stratified_split(
    labels: Sequence[int], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> list[np.ndarray]:
    """Split indices into len(fractions) parts, each label's items shared out in the same proportions."""
    fractions = np.asarray(fractions, dtype=float)
    if np.any(fractions < 0) or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"fractions must be >= 0 and sum to 1, got {fractions.tolist()}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        bounds = np.round(np.cumsum(fractions)[:-1] * len(members)).astype(int)
        for part, chunk in zip(parts, np.split(members, bounds)):
            part.extend(chunk.tolist())
    return [np.sort(np.asarray(part, dtype=int)) for part in parts]


def half_split(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split `count` items at random into two halves (train gets the extra one when odd)."""
    order = np.random.default_rng(seed).permutation(count)
    cut = (count + 1) // 2
    return np.sort(order[:cut]), np.sort(order[cut:])
