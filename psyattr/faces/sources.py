"""Where a face's regions come from: a data set's own landmarks when it has them, else the offline detector.

Every function returns None when no face (or no landmarks) is found: callers report "no face/landmarks found
in <file>" and leave the image out rather than guess where the face is.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from psyattr.data.images import CROP_SIZE, TRAIN_SIZE, decode_rgb
from psyattr.data.rated import RatedFaces
from psyattr.faces.detector import FaceMeshDetector, default_detector
from psyattr.faces.framing import FramedFace, Framing, frame_file, frame_image
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


def regions_for_file(path: str | os.PathLike, detector: FaceMeshDetector | None = None,
                     framing: str | Framing | None = None) -> FaceRegions | None:
    """Regions of an image file in its model-input frame under `framing` (default: as given), or None without a face."""
    image = load_original_rgb(path)
    landmarks = detect_landmarks(image, detector, source=f"face-mesh detector on {Path(path).name}")
    if landmarks is None:
        return None
    return framed_regions(frame_image(image, framing, landmarks, source=str(path)))


def item_landmarks(faces: RatedFaces, index: int) -> Landmarks | None:
    """The data set's own landmarks of item `index`, in its image's pixels; None when it has none.

    OMI items use OMI's stored MediaPipe mesh (`mediapipe_facemesh_468_256px.npz` beside `images_256/`), scaled to
    the image's size; 10k US Adult Faces items their `{N}_landmarks.txt`.
    """
    path = Path(faces.paths[index])
    item = faces.ids[index]
    if faces.name == "OMI":
        omi_dir = path.parent.parent
        if (omi_dir / OMI_MESH_FILE).is_file():
            landmarks = load_omi_mesh(omi_dir, item)
            if landmarks is not None:
                width, height = _image_size(path)
                scaled = landmarks.points * [width / TRAIN_SIZE, height / TRAIN_SIZE]
                return Landmarks(scaled, landmarks.scheme, landmarks.source)
    landmark_file = faces.landmarks.get(item)
    if landmark_file is not None:
        return read_stasm_landmarks(landmark_file)
    return None


def frame_item(faces: RatedFaces, index: int, framing: str | Framing | None,
               detector: FaceMeshDetector | None = None) -> FramedFace:
    """Item `index` of rated faces framed by its own landmarks where the data set has them, else the detector's."""
    return frame_file(faces.paths[index], framing, item_landmarks(faces, index), detector)


def framed_regions(framed: FramedFace) -> FaceRegions | None:
    """The face regions of a framed photo in its model-input frame, or None when it was framed without landmarks."""
    landmarks = framed.input_landmarks()
    return None if landmarks is None else build_regions(landmarks)


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).size


def regions_for_item(faces: RatedFaces, index: int, detector: FaceMeshDetector | None = None,
                     framing: str | Framing | None = None) -> FaceRegions | None:
    """Regions of item `index` of rated faces in its model-input frame under `framing` (default: as given).

    The landmarks are the data set's own when it has them (`item_landmarks`), else the detector's; None when
    neither gives a face.
    """
    own = item_landmarks(faces, index)
    if own is None:
        return regions_for_file(faces.paths[index], detector, framing)
    return framed_regions(frame_item(faces, index, framing, detector))


def frame_rated_images(faces: RatedFaces, framing: str | Framing | None, indices=None,
                       cache_dir: str | os.PathLike | None = None, progress: bool = True,
                       detector: FaceMeshDetector | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Framed 256 px images of rated faces (all, or `indices`) and the positions (into `indices`) that could be framed.

    Each face is framed by the data set's own landmarks where it has them, else the detector's; cached.
    """
    from psyattr.faces.framing import frame_images, get_framing

    framing = get_framing(framing)
    indices = list(range(len(faces))) if indices is None else [int(i) for i in indices]
    landmarks = [item_landmarks(faces, i) for i in indices] if framing.aligns else None
    return frame_images([faces.paths[i] for i in indices], framing, landmarks, cache_dir, progress, detector)
