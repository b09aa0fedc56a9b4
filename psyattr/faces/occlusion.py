"""Occlusion: cover a face region with the subject's own skin colour, edges softened, on a model-input image."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from psyattr.faces.regions import FaceRegions

# Skin is sampled from the cheeks; where they show too little (a turned or cropped face), from the face
# without its features. Features are widened first so that lashes, brows and lip edges stay out of the sample.
SKIN_EXCLUDES = ("eyes", "eyebrows", "mouth", "nose")
MIN_SKIN_PIXELS = 30


def skin_colour(image: np.ndarray, regions: FaceRegions, margin: int = 2) -> np.ndarray:
    """The subject's skin colour `(3,)`: the per-channel median over the cheeks (or the face minus its features)."""
    image = _check_image(image)
    features = regions.union(*SKIN_EXCLUDES)
    if margin:
        features = ndimage.binary_dilation(features, iterations=margin)
    for sample in (regions["cheeks"] & ~features, regions["face"] & ~features):
        if sample.sum() >= MIN_SKIN_PIXELS:
            return np.median(image[sample], axis=0).astype(np.float32)
    raise ValueError(f"too little visible skin to sample a colour from (fewer than {MIN_SKIN_PIXELS} pixels of "
                     f"cheeks or face); regions come from {regions.source}; pass colour= explicitly")


def soft_alpha(mask: np.ndarray, dilation: int = 2, softness: float = 1.5) -> np.ndarray:
    """Opacity `(H, W)` in [0, 1]: 1 on the mask widened by `dilation` px, then a Gaussian fade of width `softness` px."""
    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"a region mask must be (H, W), got shape {mask.shape}")
    if dilation < 0 or softness < 0:
        raise ValueError(f"dilation and softness must be >= 0, got {dilation} and {softness}")
    widened = ndimage.binary_dilation(mask, iterations=dilation) if dilation else mask.copy()
    if softness == 0 or not widened.any():
        return widened.astype(np.float32)
    # Falling off with the distance from the widened mask keeps all of it covered and the edge free of steps.
    distance = ndimage.distance_transform_edt(~widened)
    alpha = np.exp(-0.5 * (distance / softness) ** 2)
    alpha[distance > 3 * softness] = 0.0  # pixels farther away stay exactly as they were
    return alpha.astype(np.float32)


def occlude(image: np.ndarray, mask: np.ndarray | str, regions: FaceRegions | None = None,
            colour: np.ndarray | None = None, dilation: int = 2, softness: float = 1.5) -> np.ndarray:
    """A copy of a model-input image `(227, 227, 3)` (0..255) with `mask` (or the region of that name) covered.

    The cover is `colour`, or the subject's skin colour sampled from `regions`; it spreads `dilation` px
    beyond the mask, then fades out (half opaque `1.2 * softness` px further). The input is never modified.
    """
    image = _check_image(image)
    if isinstance(mask, str):
        if regions is None:
            raise ValueError(f"occluding the region {mask!r} by name needs regions=")
        mask = regions[mask]
    mask = np.asarray(mask, bool)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match the image {image.shape[:2]}")
    if colour is None:
        if regions is None:
            raise ValueError("occlude needs colour= or regions= to sample the skin colour from")
        colour = skin_colour(image, regions)
    colour = np.asarray(colour, np.float32).reshape(-1)
    if colour.shape != (image.shape[-1],):
        raise ValueError(f"colour must have {image.shape[-1]} channels, got {colour.shape}")
    alpha = soft_alpha(mask, dilation, softness)[..., None]
    return (image * (1 - alpha) + colour * alpha).astype(np.float32)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected one RGB image (H, W, 3) in 0..255, got shape {image.shape}")
    return image
