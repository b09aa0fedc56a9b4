"""Figures: face-region outlines drawn over an image."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from psyattr.faces.regions import COMPOSITE_REGIONS, FaceRegions

REGION_COLOURS = {
    "left_eye": (0, 200, 255), "right_eye": (0, 120, 255), "left_eyebrow": (180, 0, 255),
    "right_eyebrow": (255, 0, 200), "nose": (255, 200, 0), "mouth": (255, 40, 40),
    "left_cheek": (0, 220, 100), "right_cheek": (120, 255, 0), "face": (255, 255, 255),
}


def draw_regions(image: np.ndarray, regions: FaceRegions, names: Sequence[str] | None = None, scale: int = 3,
                 width: int = 2, colours: Mapping[str, tuple[int, int, int]] | None = None) -> np.ndarray:
    """RGB uint8 image enlarged `scale` times with the outlines of the named regions (default all) drawn on it."""
    image = np.clip(np.asarray(image, np.float32), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    canvas = Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale),
                                           Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(canvas)
    palette = {**REGION_COLOURS, **(colours or {})}
    outlined = []
    for name in names or list(regions.outlines):
        parts = COMPOSITE_REGIONS.get(name, (name,))
        for part in parts:
            if part not in regions.outlines:
                raise KeyError(f"no face region {part!r}; regions are: {', '.join(regions.masks)}")
            outlined.append(part)
    for name in dict.fromkeys(outlined):
        polygon = [(float(x) * scale, float(y) * scale) for x, y in regions.outlines[name]]
        draw.line(polygon + polygon[:1], fill=palette.get(name, (255, 255, 0)), width=width, joint="curve")
    return np.asarray(canvas)
