"""Face regions as boolean masks in the model-input frame (227x227), outlined by landmarks of either scheme."""

from __future__ import annotations

import dataclasses

import numpy as np
from matplotlib.path import Path as PolygonPath
from scipy.spatial import ConvexHull, QhullError

from psyattr.data.images import CROP_SIZE
from psyattr.faces.landmarks import (
    MESH,
    MESH_HULLS,
    MESH_RINGS,
    STASM,
    STASM_CHEEKS,
    STASM_HULLS,
    STASM_RINGS,
    Landmarks,
)

# Regions outlined by landmarks, then the unions of pairs; left/right are the subject's.
BASE_REGIONS = ("left_eye", "right_eye", "left_eyebrow", "right_eyebrow", "nose", "mouth",
                "left_cheek", "right_cheek", "face")
COMPOSITE_REGIONS = {
    "eyes": ("left_eye", "right_eye"),
    "eyebrows": ("left_eyebrow", "right_eyebrow"),
    "cheeks": ("left_cheek", "right_cheek"),
}
REGION_NAMES = ("left_eye", "right_eye", "eyes", "left_eyebrow", "right_eyebrow", "eyebrows", "nose", "mouth",
                "left_cheek", "right_cheek", "cheeks", "face")
# The cheek outlines reach up to the nose wings and the mouth corners: those features are cut out of them.
CHEEK_EXCLUDES = ("nose", "mouth", "left_eye", "right_eye")


@dataclasses.dataclass
class FaceRegions:
    """Region masks of one face: `masks[name]` is bool `(size, size)`, True inside the region.

    `outlines[name]` holds each landmark-outlined region's polygon `(K, 2)` (x, y) in the same frame,
    `visible[name]` the fraction of the region that lies inside the image (0 when entirely outside) and
    `landmarks` the points they were drawn from, with their `source`.
    """

    masks: dict[str, np.ndarray]
    outlines: dict[str, np.ndarray]
    visible: dict[str, float]
    landmarks: Landmarks

    @property
    def source(self) -> str:
        """Where the landmarks came from (a data set's file or the detector)."""
        return self.landmarks.source

    @property
    def outside(self) -> list[str]:
        """Regions that lie entirely outside the image (their masks are empty)."""
        return [name for name, share in self.visible.items() if share == 0.0]

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.masks:
            raise KeyError(f"no face region {name!r}; regions are: {', '.join(self.masks)}")
        return self.masks[name]

    def union(self, *names: str) -> np.ndarray:
        """One mask covering all the named regions."""
        combined = np.zeros_like(next(iter(self.masks.values())))
        for name in names:
            combined |= self[name]
        return combined


def polygon_mask(polygon: np.ndarray, shape: tuple[int, int], origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Pixels `(height, width)` whose centres lie inside `polygon` `(K, 2)` (x, y); `origin` is the grid's top-left."""
    height, width = shape
    ys, xs = np.mgrid[0:height, 0:width]
    centres = np.stack([xs.ravel() + origin[0] + 0.5, ys.ravel() + origin[1] + 0.5], axis=1)
    inside = PolygonPath(np.asarray(polygon, np.float64)).contains_points(centres)
    return inside.reshape(height, width)


def _clipped_mask(polygon: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """The polygon's mask on the image and the fraction of its pixels that fall inside the image."""
    low = np.floor(polygon.min(axis=0)).astype(int)
    high = np.ceil(polygon.max(axis=0)).astype(int)
    inside = np.zeros((size, size), bool)
    if (high < 0).any() or (low > size).any():
        return inside, 0.0
    # Only pixels within the polygon's bounding box are tested: a region is a small part of the image.
    x0, y0 = np.maximum(low, 0)
    x1, y1 = np.minimum(high, size)
    inside[y0:y1, x0:x1] = polygon_mask(polygon, (y1 - y0, x1 - x0), origin=(x0, y0))
    if (low >= 0).all() and (high <= size).all():
        return inside, 1.0
    # Counted on a grid that covers the whole polygon, so a half-visible region says 0.5; landmarks far off
    # the image (a broken file) are not followed further than a few image widths.
    low, high = np.maximum(low, -4 * size), np.minimum(high, 5 * size)
    whole = polygon_mask(polygon, (int(high[1] - low[1]), int(high[0] - low[0])), origin=(int(low[0]), int(low[1])))
    total = int(whole.sum())
    return inside, (float(inside.sum()) / total if total else 0.0)


def _hull(points: np.ndarray) -> np.ndarray:
    try:
        return points[ConvexHull(points).vertices]
    except QhullError:  # all points on one line: a degenerate outline with no area
        return points


def region_outlines(landmarks: Landmarks) -> dict[str, np.ndarray]:
    """The polygon `(K, 2)` of every base region, in the frame of `landmarks`."""
    points = landmarks.points
    if landmarks.scheme == MESH:
        rings, hulls = MESH_RINGS, MESH_HULLS
    elif landmarks.scheme == STASM:
        rings, hulls = STASM_RINGS, STASM_HULLS
    else:
        raise ValueError(f"unknown landmark scheme {landmarks.scheme!r}")
    outlines = {name: points[list(ring)] for name, ring in rings.items()}
    outlines.update({name: _hull(points[list(indices)]) for name, indices in hulls.items()})
    if landmarks.scheme == STASM:
        for name, recipe in STASM_CHEEKS.items():
            outlines[name] = np.array([points[a] + t * (points[b] - points[a]) for a, b, t in recipe])
    return {name: outlines[name] for name in BASE_REGIONS}


def build_regions(landmarks: Landmarks, size: int = CROP_SIZE) -> FaceRegions:
    """Masks of every region in REGION_NAMES from landmarks already in the model-input frame (`size` px)."""
    outlines = region_outlines(landmarks)
    masks, visible = {}, {}
    for name, polygon in outlines.items():
        masks[name], visible[name] = _clipped_mask(polygon, size)
    for cheek in ("left_cheek", "right_cheek"):
        for feature in CHEEK_EXCLUDES:
            masks[cheek] &= ~masks[feature]
    for name, parts in COMPOSITE_REGIONS.items():
        masks[name] = masks[parts[0]] | masks[parts[1]]
        visible[name] = (visible[parts[0]] + visible[parts[1]]) / 2
    ordered = {name: masks[name] for name in REGION_NAMES}
    return FaceRegions(ordered, outlines, {name: visible[name] for name in REGION_NAMES}, landmarks)
