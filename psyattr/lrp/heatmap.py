"""Heatmaps: channel sums, a red-blue map centred on zero, shared scales, overlays and grid figures."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from PIL import Image

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import colormaps  # noqa: E402

CMAP = "bwr"  # blue negative, white zero, red positive
DEFAULT_PERCENTILE = 99.5


def heatmap(relevance: np.ndarray) -> np.ndarray:
    """Sum relevance over the colour channels: `(..., H, W, C)` to `(..., H, W)`."""
    return np.asarray(relevance, dtype=np.float32).sum(axis=-1)


def symmetric_scale(*heatmaps: np.ndarray, percentile: float = DEFAULT_PERCENTILE) -> float:
    """One colour scale for all given heatmaps: the `percentile` of |relevance| over all of them (never 0)."""
    values = np.concatenate([np.abs(np.asarray(h, dtype=np.float32)).ravel() for h in heatmaps])
    scale = float(np.percentile(values, percentile)) if values.size else 0.0
    return scale if scale > 0 else float(values.max(initial=0.0)) or 1.0


def render(heat: np.ndarray, scale: float | None = None) -> np.ndarray:
    """Colour one heatmap `(H, W)`: red positive, blue negative, white zero; `scale` maps to full colour."""
    heat = np.asarray(heat, dtype=np.float32)
    scale = symmetric_scale(heat) if scale is None else float(scale)
    normalised = np.clip(heat / (2 * scale) + 0.5, 0.0, 1.0)
    return (colormaps[CMAP](normalised)[..., :3] * 255).astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, scale: float | None = None, alpha: float = 0.6) -> np.ndarray:
    """Blend a coloured heatmap over a grey version of the RGB image (0..255), more opaque where relevance is high."""
    image = np.asarray(image, dtype=np.float32)
    grey = np.repeat(image.mean(axis=-1, keepdims=True), 3, axis=-1)
    colours = render(heat, scale).astype(np.float32)
    scale = symmetric_scale(heat) if scale is None else float(scale)
    weight = alpha * np.clip(np.abs(heat) / scale, 0.0, 1.0)[..., None]
    return np.clip(grey * (1 - weight) + colours * weight, 0, 255).astype(np.uint8)


def save_png(array: np.ndarray, path: str | os.PathLike) -> None:
    """Save an RGB uint8 array as PNG."""
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def save_heatmap(heat: np.ndarray, path: str | os.PathLike, scale: float | None = None,
                 image: np.ndarray | None = None) -> None:
    """Write a heatmap PNG: the input and the heatmap side by side when `image` is given."""
    coloured = render(heat, scale)
    if image is not None:
        coloured = np.concatenate([np.asarray(image, dtype=np.uint8), coloured], axis=1)
    save_png(coloured, path)


def heatmap_grid(
    images: np.ndarray,
    heatmaps: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    shared_scale: bool = True,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    percentile: float = DEFAULT_PERCENTILE,
) -> float | None:
    """Draw rows of images and one column per model; return the common scale when `shared_scale`."""
    names = list(heatmaps)
    count = len(images)
    scale = symmetric_scale(*heatmaps.values(), percentile=percentile) if shared_scale else None
    fig, axes = plt.subplots(count, len(names) + 1, figsize=(2.0 * (len(names) + 1), 2.0 * count + 0.6), squeeze=False)
    for row in range(count):
        axes[row, 0].imshow(np.asarray(images[row], dtype=np.uint8))
        if row_labels is not None:
            axes[row, 0].set_ylabel(row_labels[row], fontsize=8)
        for col, name in enumerate(names, start=1):
            heat = heatmaps[name][row]
            axes[row, col].imshow(render(heat, scale if shared_scale else None))
            if row == 0:
                axes[row, col].set_title(name, fontsize=8)
    axes[0, 0].set_title("input", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    caption = "red: evidence for the output, blue: against; " + (
        f"one colour scale for all panels (±{scale:.3g})" if shared_scale else "each panel on its own scale")
    fig.suptitle(f"{title}\n{caption}" if title else caption, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return scale
