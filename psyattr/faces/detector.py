"""An offline face landmark detector: MediaPipe's BlazeFace and 468-point face mesh TFLite models, run by TensorFlow.

The two models ship in `psyattr/faces/models/` (Apache-2.0, see the LICENSE there), copied unchanged from the
mediapipe 0.10.21 wheel (`mediapipe/modules/face_detection/`, `mediapipe/modules/face_landmark/`; their SHA-256
are in MODEL_SHA256). The pipeline is MediaPipe's
FaceMesh in static-image mode, re-implemented step by step: letterbox the image to 128x128, decode BlazeFace's
896 anchor boxes, merge the overlapping boxes of each face (weighted non-maximum suppression), take a square
crop 1.5 times the box turned so the eyes are level, run the mesh model on it at 192x192, and map the 468
points back to the image. On OMI's 1004 faces (256 px) the points lie a median 0.41 px (95th percentile
1.1 px) from those of mediapipe 0.10.21 itself.
"""

from __future__ import annotations


import contextlib
import dataclasses
import os
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage, special

MODEL_DIR = Path(__file__).resolve().parent / "models"
DETECTOR_MODEL = MODEL_DIR / "face_detection_short_range.tflite"
MESH_MODEL = MODEL_DIR / "face_landmark.tflite"
MODEL_SHA256 = {
    DETECTOR_MODEL.name: "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
    MESH_MODEL.name: "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814",
}

DETECTOR_SIZE = 128
MESH_SIZE = 192
# BlazeFace short range: 4 SSD layers, the three of stride 16 share one 8x8 grid (2 anchors each).
ANCHOR_STRIDES = (8, 16, 16, 16)
ANCHORS_PER_LAYER = 2
# MediaPipe's face detection keypoints, in the subject's terms.
KEYPOINTS = ("right_eye", "left_eye", "nose_tip", "mouth_centre", "right_ear", "left_ear")
SCORE_CLIP = 100.0
SUPPRESSION_IOU = 0.3
ROI_SCALE = 1.5


class DetectorError(RuntimeError):
    """The detector's model files are missing or cannot be run."""


@dataclasses.dataclass(frozen=True)
class FaceBox:
    """One detected face in pixels of the image: box corners, the six keypoints `(6, 2)` and the score."""

    x0: float
    y0: float
    x1: float
    y1: float
    keypoints: np.ndarray
    score: float


@dataclasses.dataclass(frozen=True)
class MeshResult:
    """468 face-mesh points `(468, 3)` in pixels of the image (z on the x scale), the face box, presence and face count."""

    points: np.ndarray
    box: FaceBox
    presence: float
    faces: int = 1  # faces found in the image; the points are those of the largest


def ssd_anchors() -> np.ndarray:
    """BlazeFace's 896 anchor centres `(896, 2)` as (x, y) in [0, 1]; every anchor has width and height 1."""
    centres = []
    layer = 0
    while layer < len(ANCHOR_STRIDES):
        stride = ANCHOR_STRIDES[layer]
        # Consecutive layers of one stride share a grid: their anchors are interleaved per location.
        repeats = 0
        while layer < len(ANCHOR_STRIDES) and ANCHOR_STRIDES[layer] == stride:
            repeats += ANCHORS_PER_LAYER
            layer += 1
        cells = int(np.ceil(DETECTOR_SIZE / stride))
        ys, xs = np.meshgrid((np.arange(cells) + 0.5) / cells, (np.arange(cells) + 0.5) / cells, indexing="ij")
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(grid, repeats, axis=0))
    return np.concatenate(centres).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return special.expit(np.clip(x, -SCORE_CLIP, SCORE_CLIP))


def decode_boxes(regressors: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Decode BlazeFace regressors `(896, 16)` to `(896, 16)`: box x0, y0, x1, y1 then 6 keypoints (x, y), in [0, 1]."""
    scaled = regressors / DETECTOR_SIZE
    centre = scaled[:, :2] + anchors
    half = scaled[:, 2:4] / 2
    keypoints = scaled[:, 4:].reshape(-1, 6, 2) + anchors[:, None, :]
    return np.concatenate([centre - half, centre + half, keypoints.reshape(-1, 12)], axis=1)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def all_faces(decoded: np.ndarray, scores: np.ndarray, threshold: float) -> list[tuple[np.ndarray, float]]:
    """Every face above `threshold`, best first: each one's overlapping boxes averaged by score (weighted NMS)."""
    keep = scores >= threshold
    decoded, scores = decoded[keep], scores[keep]
    faces = []
    while len(scores):
        top = int(np.argmax(scores))
        overlapping = _iou(decoded[top], decoded) > SUPPRESSION_IOU
        weights = scores[overlapping]
        faces.append(((decoded[overlapping] * weights[:, None]).sum(axis=0) / weights.sum(), float(scores[top])))
        decoded, scores = decoded[~overlapping], scores[~overlapping]
    return faces


def best_face(decoded: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[np.ndarray, float] | None:
    """The highest-scoring face above `threshold`, averaged with its overlapping boxes by score (weighted NMS)."""
    faces = all_faces(decoded, scores, threshold)
    return faces[0] if faces else None


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the TFLite runtime's C++ banner ("Created TensorFlow Lite XNNPACK delegate") and its deprecation note."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*tf\.lite\.Interpreter is deprecated.*")
        try:
            saved = os.dup(2)
        except OSError:  # no real stderr (e.g. some notebook kernels): nothing to silence
            yield
            return
        try:
            with open(os.devnull, "w") as devnull:
                os.dup2(devnull.fileno(), 2)
                yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _interpreter(path: Path):
    if not path.is_file():
        raise DetectorError(f"face model {path} is missing: reinstall psyattr (the .tflite files are package data)")
    import tensorflow as tf

    with _quiet_stderr():
        interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=1)
        interpreter.allocate_tensors()
        # The XNNPACK delegate is applied, and announces itself, at the first invoke.
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"],
                               np.zeros(interpreter.get_input_details()[0]["shape"], np.float32))
        interpreter.invoke()
    return interpreter


class FaceMeshDetector:
    """Find the largest face in an RGB image and its 468 face-mesh points (MediaPipe FaceMesh, static mode).

    `detector(image)` takes RGB `(H, W, 3)` (uint8, or float in 0..255) and returns a `MeshResult` of the
    largest face in the image's pixel frame, or None when no face is found or the mesh model says the crop
    holds no face.
    Threads may share a detector: its TFLite interpreters (which are not thread-safe) run one call at a time.
    """

    def __init__(self, min_detection_score: float = 0.5, min_presence: float = 0.5):
        if not 0.0 < min_detection_score < 1.0 or not 0.0 < min_presence < 1.0:
            raise ValueError(f"scores must lie in (0, 1), got {min_detection_score} and {min_presence}")
        self.min_detection_score = min_detection_score
        self.min_presence = min_presence
        self._detector = _interpreter(DETECTOR_MODEL)
        self._mesh = _interpreter(MESH_MODEL)
        self._anchors = ssd_anchors()
        self._lock = threading.Lock()

    def _run(self, interpreter, tensor: np.ndarray) -> dict[str, np.ndarray]:
        with self._lock:
            interpreter.set_tensor(interpreter.get_input_details()[0]["index"], tensor[None].astype(np.float32))
            interpreter.invoke()
            return {d["name"]: interpreter.get_tensor(d["index"]).copy() for d in interpreter.get_output_details()}

    def detect_all(self, image: np.ndarray) -> list[FaceBox]:
        """Every face box in `image` (pixels) whose score reaches `min_detection_score`, best first."""
        image = _as_rgb(image)
        height, width = image.shape[:2]
        side = max(height, width)
        # Letterbox: scale the long side to 128 and pad the short one equally on both sides with black.
        scaled_w, scaled_h = max(1, round(width * DETECTOR_SIZE / side)), max(1, round(height * DETECTOR_SIZE / side))
        resized = np.asarray(Image.fromarray(image).resize((scaled_w, scaled_h), Image.Resampling.BILINEAR))
        canvas = np.zeros((DETECTOR_SIZE, DETECTOR_SIZE, 3), np.float32)
        top, left = (DETECTOR_SIZE - scaled_h) // 2, (DETECTOR_SIZE - scaled_w) // 2
        canvas[top : top + scaled_h, left : left + scaled_w] = resized
        outputs = self._run(self._detector, canvas / 127.5 - 1.0)
        decoded = decode_boxes(outputs["regressors"][0], self._anchors)
        boxes = []
        for merged, score in all_faces(decoded, _sigmoid(outputs["classificators"][0, :, 0]), self.min_detection_score):
            # From the letterboxed square (in [0, 1]) back to image pixels.
            xy = merged.reshape(-1, 2) * DETECTOR_SIZE - [left, top]
            xy *= [width / scaled_w, height / scaled_h]
            boxes.append(FaceBox(*xy[0], *xy[1], keypoints=xy[2:], score=score))
        return boxes

    def detect(self, image: np.ndarray) -> FaceBox | None:
        """The best face box in `image` (pixels), or None when no score reaches `min_detection_score`."""
        boxes = self.detect_all(image)
        return boxes[0] if boxes else None

    def __call__(self, image: np.ndarray) -> MeshResult | None:
        """468 mesh points of the largest face in `image` (`faces` says how many were found), or None."""
        image = _as_rgb(image)
        boxes = self.detect_all(image)
        if not boxes:
            return None
        box = max(boxes, key=lambda b: (b.x1 - b.x0) * (b.y1 - b.y0))
        centre, side, angle = mesh_roi(box)
        crop = crop_rotated(image, centre, side, angle, MESH_SIZE)
        outputs = self._run(self._mesh, crop / 255.0)
        presence = float(_sigmoid(outputs["conv2d_31"].reshape(())))
        if presence < self.min_presence:
            return None
        local = outputs["conv2d_21"].reshape(468, 3)
        points = np.empty((468, 3), np.float32)
        points[:, :2] = roi_to_image(local[:, :2] / MESH_SIZE, centre, side, angle)
        points[:, 2] = local[:, 2] / MESH_SIZE * side
        return MeshResult(points, box, presence, len(boxes))


def mesh_roi(box: FaceBox) -> tuple[np.ndarray, float, float]:
    """The mesh model's square crop for a face: centre (x, y), side in pixels and rotation in radians (eyes level)."""
    right_eye, left_eye = box.keypoints[0], box.keypoints[1]
    # The angle that turns the line from the subject's right eye to the left eye horizontal.
    angle = -np.arctan2(-(left_eye[1] - right_eye[1]), left_eye[0] - right_eye[0])
    centre = np.array([(box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2])
    side = max(box.x1 - box.x0, box.y1 - box.y0) * ROI_SCALE
    return centre, float(side), float(angle)


def roi_to_image(local: np.ndarray, centre: np.ndarray, side: float, angle: float) -> np.ndarray:
    """Map points `(N, 2)` of a rotated square crop, in [0, 1] of the crop, to image pixels."""
    cos, sin = np.cos(angle), np.sin(angle)
    offset = (np.asarray(local, np.float64) - 0.5) * side
    rotated = np.stack([cos * offset[:, 0] - sin * offset[:, 1], sin * offset[:, 0] + cos * offset[:, 1]], axis=1)
    return (rotated + centre).astype(np.float32)


def crop_rotated(image: np.ndarray, centre: np.ndarray, side: float, angle: float, size: int) -> np.ndarray:
    """Sample a rotated square (`side` pixels, centred at `centre`) of an RGB image to `size` x `size`, float 0..255."""
    steps = (np.arange(size) + 0.5) / size
    grid = np.stack(np.meshgrid(steps, steps, indexing="xy"), axis=-1).reshape(-1, 2)
    source = roi_to_image(grid, centre, side, angle) - 0.5  # continuous pixel coordinates to pixel-centre indices
    image = np.asarray(image, np.float32)
    if side > 2 * size:
        # Much larger crops are smoothed first so that sampling them does not alias.
        sigma = 0.5 * side / size
        image = ndimage.gaussian_filter(image, sigma=(sigma, sigma, 0))
    channels = [ndimage.map_coordinates(image[..., c], [source[:, 1], source[:, 0]], order=1, mode="nearest")
                for c in range(3)]
    return np.stack(channels, axis=-1).reshape(size, size, 3)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
    return np.clip(np.rint(image[..., :3]), 0, 255).astype(np.uint8)


_DEFAULT: FaceMeshDetector | None = None
_DEFAULT_LOCK = threading.Lock()


def default_detector() -> FaceMeshDetector:
    """One shared detector with MediaPipe's default thresholds (0.5), built on first use."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = FaceMeshDetector()
        return _DEFAULT
