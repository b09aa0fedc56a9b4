"""Aligning any face photo to the framing the attribute models learned from (OMI's FFHQ alignment)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from psyattr.data.images import TRAIN_SIZE, center_crop, decode_rgb
from psyattr.faces.detector import FaceMeshDetector
from psyattr.faces.landmarks import MESH, MESH_RINGS, STASM_RINGS, Landmarks
from psyattr.faces.regions import FaceRegions, build_regions
from psyattr.faces.sources import detect_landmarks

# Mean centres of the subject's right eye, left eye and mouth over OMI's 1,004 faces, in its 256 px frame
# (from the MediaPipe mesh shipped with OMI): the eyes sit at y 122, the mouth at y 190.
OMI_TEMPLATE = np.array([[96.2, 121.7], [159.6, 121.8], [128.1, 189.5]])


def anchor_points(landmarks: Landmarks) -> np.ndarray:
    """Centres of the subject's right eye, left eye and mouth `(3, 2)`."""
    rings = MESH_RINGS if landmarks.scheme == MESH else STASM_RINGS
    return np.stack([landmarks.points[list(rings[name])].mean(axis=0) for name in ("right_eye", "left_eye", "mouth")])


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 matrix of the rotation, uniform scale and shift that best maps `source` points onto `target`."""
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    mean_s, mean_t = source.mean(axis=0), target.mean(axis=0)
    centred_s, centred_t = source - mean_s, target - mean_t
    # Umeyama's least-squares solution, restricted to proper rotations.
    u, singular, vt = np.linalg.svd(centred_t.T @ centred_s / len(source))
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = u @ sign @ vt
    scale = float(np.trace(np.diag(singular) @ sign) / centred_s.var(axis=0).sum())
    shift = mean_t - scale * rotation @ mean_s
    return np.hstack([scale * rotation, shift[:, None]])


def align_face(image: np.ndarray, landmarks: Landmarks, size: int = TRAIN_SIZE) -> tuple[np.ndarray, Landmarks]:
    """Warp an RGB image so that its eyes and mouth sit where OMI's do; return it (size x size) and the moved points."""
    matrix = similarity_transform(anchor_points(landmarks), OMI_TEMPLATE * size / TRAIN_SIZE)
    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
    # Pixels from outside the photo take its border colour rather than black.
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).mean(axis=0)
    warped = Image.fromarray(np.asarray(image, np.uint8)).transform(
        (size, size), Image.Transform.AFFINE, data=tuple(inverse.ravel()), resample=Image.Resampling.BILINEAR,
        fillcolor=tuple(int(c) for c in border))
    points = landmarks.points @ matrix[:, :2].T + matrix[:, 2]
    return np.asarray(warped, np.uint8), Landmarks(points, landmarks.scheme, landmarks.source)


def aligned_model_input(path: str | os.PathLike, detector: FaceMeshDetector | None = None
                        ) -> tuple[np.ndarray, FaceRegions] | None:
    """A photo as model input `(227, 227, 3)` float, aligned to OMI's framing, with its face regions; None without a face."""
    image = decode_rgb(path)
    landmarks = detect_landmarks(image, detector, source=f"face-mesh detector on {Path(path).name}")
    if landmarks is None:
        return None
    aligned, moved = align_face(image, landmarks)
    regions = build_regions(moved.to_model_input((TRAIN_SIZE, TRAIN_SIZE)))
    return center_crop(aligned).astype(np.float32), regions
