"""Face landmarks: the two point schemes psyattr reads (MediaPipe's 468-point mesh, Stasm's 77 points), their
region outlines, the readers of stored landmarks and the mapping into the model-input frame.

Coordinates are continuous pixels (x, y): (0, 0) is the top-left corner of the top-left pixel, so a point keeps
its place on the face when the image is resized. "left" and "right" in region names are the SUBJECT's: the
subject's right eye is on the image's left.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import numpy as np

from psyattr.data.images import CROP_SIZE, TRAIN_SIZE

MESH = "mediapipe_mesh_468"
STASM = "stasm_77"

# MediaPipe face-mesh outlines, each an ordered ring of point indices. Taken from the connection sets
# FACEMESH_RIGHT_EYE, FACEMESH_LEFT_EYE, FACEMESH_RIGHT_EYEBROW, FACEMESH_LEFT_EYEBROW, FACEMESH_LIPS (outer
# ring) and FACEMESH_FACE_OVAL of mediapipe/python/solutions/face_mesh_connections.py, Copyright 2021 The
# MediaPipe Authors, Apache License 2.0 (psyattr/faces/models/LICENSE). MediaPipe's left/right are the subject's.
MESH_RINGS: dict[str, tuple[int, ...]] = {
    "right_eye": (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7),
    "left_eye": (263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249),
    "right_eyebrow": (70, 63, 105, 66, 107, 55, 65, 52, 53, 46),
    "left_eyebrow": (300, 293, 334, 296, 336, 285, 295, 282, 283, 276),
    "mouth": (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146),
    # The cheeks: the mesh points two edges away from the cheek centres 205 and 425 of MediaPipe's
    # tessellation (cheekbone, under the eye, beside the nose, the nasolabial fold, beside the mouth corner).
    "right_cheek": (123, 117, 118, 119, 120, 100, 142, 203, 165, 92, 186, 212, 214, 192, 213, 147),
    "left_cheek": (352, 346, 347, 348, 349, 329, 371, 423, 391, 322, 410, 432, 434, 416, 433, 376),
    "face": (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148,
             176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109),
}
# The nose has no outline in the mesh: its region is the convex hull of FACEMESH_NOSE (bridge from between
# the eyes to the tip, nostril wings, base).
MESH_HULLS: dict[str, tuple[int, ...]] = {
    "nose": (168, 6, 197, 195, 5, 4, 1, 19, 94, 2, 98, 97, 326, 327, 294, 278, 344, 440, 275, 45, 220, 115, 48, 64),
}

# Stasm's 77 points (the MUCT-77 layout of 10k US Adult Faces). Stasm's L/R are the VIEWER's: its "left eye"
# (points 30-37) is the subject's right eye.
STASM_POINTS = 77
STASM_RINGS: dict[str, tuple[int, ...]] = {
    "right_eye": (30, 31, 32, 33, 34, 35, 36, 37),
    "left_eye": (40, 41, 42, 43, 44, 45, 46, 47),
    "right_eyebrow": (16, 17, 18, 19, 20, 21),
    "left_eyebrow": (22, 23, 24, 25, 26, 27),
    # Outer lip contour: left corner 59, upper lip to the right corner 65, lower lip back.
    "mouth": (59, 60, 61, 62, 63, 64, 65, 72, 73, 74, 75, 76),
    # Jaw temple to temple through the chin (0-12), then the forehead from the viewer's right (13-15).
    "face": tuple(range(16)),
}
STASM_HULLS: dict[str, tuple[int, ...]] = {"nose": tuple(range(48, 59))}
# Stasm has no cheek points: a cheek is outlined by points between the eye, the nose wing, the mouth corner
# and the jaw, each (a, b, t) being the point a fraction t of the way from landmark a to landmark b.
STASM_CHEEKS: dict[str, tuple[tuple[int, int, float], ...]] = {
    "right_cheek": ((2, 34, 0.12), (34, 2, 0.45), (35, 3, 0.25), (37, 58, 0.4), (58, 34, 0.25), (58, 2, 0.12),
                    (57, 59, 0.5), (59, 2, 0.1), (59, 3, 0.25), (3, 59, 0.2), (2, 59, 0.15)),
    "left_cheek": ((10, 44, 0.12), (44, 10, 0.45), (45, 9, 0.25), (47, 54, 0.4), (54, 44, 0.25), (54, 10, 0.12),
                   (55, 65, 0.5), (65, 10, 0.1), (65, 9, 0.25), (9, 65, 0.2), (10, 65, 0.15)),
}

OMI_MESH_FILE = "mediapipe_facemesh_468_256px.npz"


class LandmarkError(ValueError):
    """A landmark file that cannot be read or does not hold the expected points."""


@dataclasses.dataclass(frozen=True)
class Landmarks:
    """Points `(N, 2)` (x, y) in continuous pixels of some frame, their `scheme` (MESH or STASM) and `source`."""

    points: np.ndarray
    scheme: str
    source: str

    def __post_init__(self):
        expected = {MESH: 468, STASM: STASM_POINTS}
        if self.scheme not in expected:
            raise ValueError(f"unknown landmark scheme {self.scheme!r}: expected {MESH!r} or {STASM!r}")
        shape = np.shape(self.points)
        if len(shape) != 2 or shape[0] != expected[self.scheme] or shape[1] < 2:
            raise ValueError(f"{self.scheme} landmarks must be ({expected[self.scheme]}, 2), got {shape}")
        object.__setattr__(self, "points", np.asarray(self.points, np.float64)[:, :2])

    def to_model_input(self, image_size: tuple[int, int]) -> Landmarks:
        """The same points in the model-input frame of an image of `image_size` (width, height): 256 px, centre crop."""
        return Landmarks(to_model_input(self.points, image_size), self.scheme, self.source)


def to_model_input(points: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Map points `(N, 2)` from an image of `image_size` (width, height) to the 227 px model input.

    `load_model_input` resizes every image to 256x256 (aspect not kept) and crops the centre 227x227.
    """
    width, height = image_size
    offset = (TRAIN_SIZE - CROP_SIZE) // 2
    points = np.asarray(points, np.float64)[:, :2]
    return points * [TRAIN_SIZE / width, TRAIN_SIZE / height] - offset


def read_stasm_landmarks(path: str | os.PathLike) -> Landmarks:
    """Read a `{N}_landmarks.txt` of 10k US Adult Faces: 77 lines "x y" in the image's pixels (Stasm order)."""
    path = Path(path)
    try:
        lines = [line.split() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError as err:
        raise LandmarkError(f"cannot read landmark file {path}: {err}") from err
    rows = [line for line in lines if line]
    try:
        points = np.array([[float(row[0]), float(row[1])] for row in rows])
    except (ValueError, IndexError) as err:
        raise LandmarkError(f"{path}: every line must be two numbers \"x y\" ({err})") from err
    if points.shape != (STASM_POINTS, 2) or not np.isfinite(points).all():
        raise LandmarkError(f"{path} holds {len(rows)} points, expected {STASM_POINTS} finite Stasm landmarks")
    # Stasm writes OpenCV pixel indices (0 is the centre of the first pixel); half a pixel more is its place
    # in continuous coordinates.
    return Landmarks(points + 0.5, STASM, f"landmark file {path.name}")


@functools.lru_cache(maxsize=4)
def _omi_mesh_table(path: Path) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    try:
        with np.load(path) as data:
            stimuli, landmarks, detected = data["stimulus"], data["landmarks"], data["detected"]
    except (OSError, KeyError, ValueError) as err:
        raise LandmarkError(f"cannot read {path}: {err} (it needs the keys stimulus, landmarks, detected)") from err
    if landmarks.ndim != 3 or landmarks.shape[1:] != (468, 3) or len(stimuli) != len(landmarks):
        raise LandmarkError(f"{path}: landmarks must be (N, 468, 3) beside N stimuli, got {landmarks.shape}")
    index = {str(int(s)): i for i, s in enumerate(stimuli)}
    return index, landmarks.astype(np.float32), detected.astype(bool)


def load_omi_mesh(omi_dir: str | os.PathLike, stimulus: str | int) -> Landmarks | None:
    """OMI's stored MediaPipe mesh of one stimulus in pixels of its 256 px image, or None if it was not detected."""
    path = Path(omi_dir) / OMI_MESH_FILE
    if not path.is_file():
        raise LandmarkError(f"{path} not found: pass the OMI folder that holds {OMI_MESH_FILE}")
    index, landmarks, detected = _omi_mesh_table(path)
    row = index.get(str(stimulus).strip())
    if row is None or not detected[row]:
        return None
    # Stored normalised to [0, 1] of the 256 px image, as MediaPipe reports them.
    return Landmarks(landmarks[row, :, :2] * TRAIN_SIZE, MESH, f"OMI {OMI_MESH_FILE}")
