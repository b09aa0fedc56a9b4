"""Where a face's regions come from: a data set's own landmarks when it has them, else the offline detector.

Every function returns None when no face (or no landmarks) is found: callers report "no face/landmarks found
in <file>" and leave the image out rather than guess where the face is.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from psyattr.data.images import CROP_SIZE, decode_rgb
from psyattr.data.rated import RatedFaces
from psyattr.faces.detector import FaceMeshDetector, default_detector
from psyattr.faces.landmarks import MESH, OMI_MESH_FILE, Landmarks, load_omi_mesh, read_stasm_landmarks
from psyattr.faces.regions import FaceRegions, build_regions


def load_original_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image at its own size to RGB uint8 `(H, W, 3)`, EXIF-rotated, as the model input is made from."""
    return decode_rgb(path)


def detect_landmarks(image: np.ndarray, detector: FaceMeshDetector | None = None,
                     source: str = "face-mesh detector") -> Landmarks | None:
    """468 mesh points of the best face in an RGB image (in its own pixels), or None when there is no face."""
    result = (detector or default_detector())(image)
    if result is None:
        return None
    return Landmarks(result.points[:, :2], MESH, source)


def regions_for_image(image: np.ndarray, detector: FaceMeshDetector | None = None) -> FaceRegions | None:
    """Regions of a model-input image `(227, 227, 3)` (0..255) found by the detector, or None when there is no face."""
    image = np.asarray(image)
    if image.shape[:2] != (CROP_SIZE, CROP_SIZE):
        raise ValueError(f"expected a model-input image ({CROP_SIZE}, {CROP_SIZE}, 3), got {image.shape}: "
                         "use regions_for_file for an image file of any size")
    landmarks = detect_landmarks(image, detector)
    return None if landmarks is None else build_regions(landmarks)


def regions_for_file(path: str | os.PathLike, detector: FaceMeshDetector | None = None) -> FaceRegions | None:
    """Regions of an image file in its model-input frame, detected at the file's own size and aspect, or None."""
    image = load_original_rgb(path)
    landmarks = detect_landmarks(image, detector, source=f"face-mesh detector on {Path(path).name}")
    if landmarks is None:
        return None
    height, width = image.shape[:2]
    return build_regions(landmarks.to_model_input((width, height)))


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).size


def regions_for_item(faces: RatedFaces, index: int, detector: FaceMeshDetector | None = None) -> FaceRegions | None:
    """Regions of item `index` of rated faces: from the data set's own landmarks when present, else the detector.

    OMI items use OMI's stored MediaPipe mesh (`mediapipe_facemesh_468_256px.npz` beside `images_256/`);
    10k US Adult Faces items their `{N}_landmarks.txt`. None when no landmarks exist and no face is found.
    """
    path = Path(faces.paths[index])
    item = faces.ids[index]
    if faces.name == "OMI":
        omi_dir = path.parent.parent
        if (omi_dir / OMI_MESH_FILE).is_file():
            landmarks = load_omi_mesh(omi_dir, item)
            if landmarks is not None:
                return build_regions(landmarks.to_model_input(_image_size(path)))
    landmark_file = faces.landmarks.get(item)
    if landmark_file is not None:
        return build_regions(read_stasm_landmarks(landmark_file).to_model_input(_image_size(path)))
    return regions_for_file(path, detector)
