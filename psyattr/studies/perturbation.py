"""Region perturbation (Samek et al. 2017): remove the most relevant patches first and record the score.

The heatmap is cut into non-overlapping `patch` x `patch` squares on a grid centred in the image (the
border left over when `patch` does not divide the size, 1 pixel for 9 or 15 on 227, is never
perturbed, so every patch has the same area and summed relevance compares fairly). Step k replaces
the k-th most relevant patch's pixels by the perturbation and records the explained score f(x_k).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from psyattr.attribution import image_seed

# What replaces a removed patch. Uniform noise per pixel and channel is Samek et al.'s choice.
PERTURBATIONS = {"uniform": "uniform noise in 0..255", "mean": "the image's mean colour"}

ScoreFunction = Callable[[np.ndarray], np.ndarray]
"""Images `(N, H, W, C)` to all pre-activation outputs `(N, K)`."""

# Streams of the study seed, so that noise, tie-breaking and random heatmaps never share draws.
NOISE_STREAM = 1
TIE_STREAM = 2


def check_perturbation(perturbation: str) -> str:
    """Return `perturbation` if known, else raise a ValueError listing the choices."""
    if perturbation not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {perturbation!r}: expected one of {', '.join(PERTURBATIONS)}")
    return perturbation


def patch_grid(height: int, width: int, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """Top and left pixel of every patch `(P,)`, row by row, on a grid centred in a `height` x `width` image."""
    if not isinstance(patch, (int, np.integer)) or patch < 1 or patch > min(height, width):
        raise ValueError(f"patch must be a whole number of pixels from 1 to {min(height, width)}, got {patch!r}")
    rows, cols = height // patch, width // patch
    tops = (height - rows * patch) // 2 + patch * np.arange(rows)
    lefts = (width - cols * patch) // 2 + patch * np.arange(cols)
    return np.repeat(tops, cols), np.tile(lefts, rows)


def patch_relevance(heatmaps: np.ndarray, patch: int) -> np.ndarray:
    """Summed relevance of every grid patch `(N, P)`, in `patch_grid` order."""
    n, height, width = heatmaps.shape
    rows, cols = height // patch, width // patch
    top, left = (height - rows * patch) // 2, (width - cols * patch) // 2
    inner = heatmaps[:, top:top + rows * patch, left:left + cols * patch].astype(np.float64)
    return inner.reshape(n, rows, patch, cols, patch).sum(axis=(2, 4)).reshape(n, rows * cols)


def patch_order(heatmaps: np.ndarray, patch: int, seed: int = 0) -> np.ndarray:
    """Patch indices `(N, P)`, most relevant first; ties (e.g. Grad-CAM's zeros) in one seeded random order."""
    sums = patch_relevance(heatmaps, patch)
    # A tie-break by position would favour the top-left corner; a fixed random one favours nothing.
    tie_break = np.random.default_rng([seed, TIE_STREAM]).random(sums.shape[1])
    return np.lexsort((np.broadcast_to(tie_break, sums.shape), -sums), axis=-1)


def perturbation_values(images: np.ndarray, perturbation: str = "uniform", seed: int = 0) -> np.ndarray:
    """What replaces each image's pixels, `images.shape`: seeded noise per image (the same in any batch) or its mean."""
    check_perturbation(perturbation)
    if perturbation == "mean":
        return np.broadcast_to(images.mean(axis=(1, 2), keepdims=True), images.shape).astype(np.float32)
    return np.stack([image_seed(seed, image, NOISE_STREAM).uniform(0.0, 255.0, image.shape).astype(np.float32)
                     for image in images])


def perturbation_curves(score_fn: ScoreFunction, images: np.ndarray, heatmaps: np.ndarray, targets: np.ndarray,
                        steps: int = 100, patch: int = 9, perturbation: str = "uniform", seed: int = 0,
                        batch_size: int = 8) -> np.ndarray:
    """The explained score f(x_k) `(N, steps + 1)` while the most relevant patches are replaced, k = 0..steps.

    `score_fn` maps images to all pre-activation outputs; `targets` picks one per image. Each step runs
    one forward pass for a whole batch of `batch_size` images.
    """
    images = np.asarray(images, dtype=np.float32)
    heatmaps = np.asarray(heatmaps)
    targets = np.asarray(targets, dtype=np.int64)
    if images.ndim != 4:
        raise ValueError(f"images must be a batch (N, H, W, C), got shape {images.shape}")
    if heatmaps.shape != images.shape[:3]:
        raise ValueError(f"heatmaps must be (N, H, W) = {images.shape[:3]} to match the images, got {heatmaps.shape}")
    if targets.shape != (len(images),):
        raise ValueError(f"targets must hold one output index per image ({len(images)},), got shape {targets.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    tops, lefts = patch_grid(images.shape[1], images.shape[2], patch)
    if not isinstance(steps, (int, np.integer)) or not 1 <= steps <= len(tops):
        raise ValueError(f"steps must be from 1 to the number of {patch}x{patch} patches ({len(tops)}), got {steps!r}")
    order = patch_order(heatmaps, patch, seed)[:, :steps]
    curves = np.empty((len(images), steps + 1), dtype=np.float64)
    for start in range(0, len(images), batch_size):
        chunk = slice(start, start + batch_size)
        x = images[chunk].copy()
        replacement = perturbation_values(images[chunk], perturbation, seed)
        rows = np.arange(len(x))
        chunk_targets = targets[chunk]
        curves[chunk, 0] = score_fn(x)[rows, chunk_targets]
        for k in range(steps):
            for i, index in enumerate(order[chunk, k]):
                window = (i, slice(tops[index], tops[index] + patch), slice(lefts[index], lefts[index] + patch))
                x[window] = replacement[window]
            curves[chunk, k + 1] = score_fn(x)[rows, chunk_targets]
    return curves


def aopc(curves: np.ndarray) -> np.ndarray:
    """Area over the perturbation curve per image `(N,)`: the mean over k = 0..L of f(x_0) - f(x_k)."""
    curves = np.asarray(curves, dtype=np.float64)
    return (curves[:, :1] - curves).mean(axis=1)


def standard_error(values: np.ndarray) -> float:
    """Standard error of the mean (NaN for fewer than two values)."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


__all__ = [
    "PERTURBATIONS", "ScoreFunction", "aopc", "check_perturbation", "patch_grid", "patch_order", "patch_relevance",
    "perturbation_curves", "perturbation_values", "standard_error",
]
