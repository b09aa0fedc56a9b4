"""Face framing: where a model expects the eyes and the mouth, defined once and applied on every path.

A `Framing` names a template, the centres of the subject's right eye, left eye and mouth in a square frame
of `size` pixels (256: the model input is its centre 227 x 227). A photo is framed by the similarity
transform (rotation, uniform scale, shift) that best maps its own eye and mouth centres onto the template,
from landmarks: the data set's own where it has them (OMI's mesh, 10k US Adult Faces' 77 points), else the
shipped face-mesh detector. `none` takes the image as given, resized to the frame.

Registered framings:

- `utkface`: the framing of the base nets' pretraining data. Its template is the median of the eye and mouth
  centres that the shipped detector finds on UTKFace's 9,710 detectable photos (`scripts/derive_framing.py`),
  in the 256 px frame those photos were trained in, made left-right symmetric about the frame's centre so
  that a mirrored framed face is again a framed face.
- `omi`: the FFHQ framing of the OMI faces (the mean of OMI's own mesh over its 1,004 faces).
- `none`: the image as given, resized to 256 x 256 (aspect not kept).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from psyattr.data.images import CROP_SIZE, TRAIN_SIZE, ImageError, decode_rgb
from psyattr.faces.landmarks import MESH, MESH_HULLS, MESH_RINGS, STASM_HULLS, STASM_RINGS, Landmarks

# Faces (the detector's box) and images framed as given must be at least this many pixels across.
MIN_FACE_PIXELS = 40
# A face is refused as cut off when more than this share of its eye, eyebrow, nose and mouth points lie outside
# the photo; a framed face that reaches past the photo's edge by more than FILLED_NOTE is framed with a note.
MAX_FEATURES_OUTSIDE = 0.1
FILLED_NOTE = 0.2
CROP_OFFSET = (TRAIN_SIZE - CROP_SIZE) // 2


class FramingError(ImageError):
    """A photo that cannot be framed as a model expects (no face, a tiny face, a face cut off)."""


@dataclasses.dataclass(frozen=True)
class Framing:
    """Where the subject's right eye, left eye and mouth go in a `size` px frame; `template` None keeps the image."""

    name: str
    template: tuple[tuple[float, float], tuple[float, float], tuple[float, float]] | None
    description: str
    size: int = TRAIN_SIZE

    def __post_init__(self):
        if self.template is not None and np.shape(self.template) != (3, 2):
            raise ValueError(f"framing {self.name!r}: the template must be 3 (x, y) points, got {self.template!r}")

    @property
    def aligns(self) -> bool:
        """Whether the framing moves the face (it needs landmarks), rather than taking the image as given."""
        return self.template is not None

    def to_json(self) -> dict:
        """The framing as it is recorded in run folders, models and exports."""
        return {"name": self.name, "size": self.size, "crop": CROP_SIZE,
                "template": None if self.template is None else [list(p) for p in self.template],
                "description": self.description}

    @classmethod
    def from_json(cls, record: dict) -> Framing:
        """The framing a model or export records: the registered one of that name, or the recorded template."""
        try:
            name, size = str(record["name"]), int(record.get("size", TRAIN_SIZE))
            template = record.get("template")
            template = None if template is None else tuple((float(x), float(y)) for x, y in template)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a framing record: {record!r} ({err})") from None
        if size != TRAIN_SIZE or record.get("crop", CROP_SIZE) != CROP_SIZE:
            raise ValueError(f"framing {name!r} has a {size} px frame: psyattr's models take the centre "
                             f"{CROP_SIZE} px of a {TRAIN_SIZE} px frame")
        known = FRAMINGS.get(name)
        if known is not None and np.allclose(np.asarray(known.template or [[0, 0]] * 3),
                                             np.asarray(template or [[0, 0]] * 3), atol=1e-6) and \
                (known.template is None) == (template is None):
            return known
        return cls(name, template, str(record.get("description", "a recorded framing")), size)


FRAMINGS: dict[str, Framing] = {}


def register_framing(framing: Framing) -> Framing:
    """Add a framing to the registry under its name."""
    FRAMINGS[framing.name] = framing
    return framing


def _symmetric(right_eye: tuple[float, float], left_eye: tuple[float, float], mouth: tuple[float, float],
               centre: float = TRAIN_SIZE / 2) -> tuple:
    half = (left_eye[0] - right_eye[0]) / 2
    eye_y = (right_eye[1] + left_eye[1]) / 2
    return ((round(centre - half, 2), round(eye_y, 2)), (round(centre + half, 2), round(eye_y, 2)), (centre, mouth[1]))


# scripts/derive_framing.py: median centres on UTKFace (200 px photos, in their 256 px training frame).
UTKFACE = register_framing(Framing(
    "utkface", _symmetric((75.30, 76.11), (176.82, 76.42), (126.00, 179.87)),
    "UTKFace's tight crop, the base nets' pretraining framing: eyes 101.5 px apart at y 76, mouth at y 180 "
    "(256 px frame)"))
OMI = register_framing(Framing(
    "omi", ((96.2, 121.7), (159.6, 121.8), (128.1, 189.5)),
    "OMI's FFHQ framing: eyes 63.4 px apart at y 122, mouth at y 190 (256 px frame)"))
NONE = register_framing(Framing("none", None, "the image as given, resized to 256 x 256"))
DEFAULT_FRAMING = UTKFACE.name


def get_framing(framing: str | Framing | None) -> Framing:
    """A registered framing by name (None is `none`), or `framing` itself."""
    if isinstance(framing, Framing):
        return framing
    name = "none" if framing is None else str(framing)
    if name not in FRAMINGS:
        raise ValueError(f"unknown framing {name!r}: expected one of {', '.join(FRAMINGS)}")
    return FRAMINGS[name]


FROM_MODEL = "model"
"""As a `framing` argument: the framing the model records (an error if it records none)."""


def resolve_framing(requested: str | Framing | None, recorded: dict | None, what: str) -> Framing:
    """The framing to apply: `requested` (None: the images are framed already), else what `what` records.

    `requested` FROM_MODEL takes `recorded` (a model's or an export's framing record) and refuses a model that
    records none, rather than guess how its photos must be framed.
    """
    if requested != FROM_MODEL:
        return get_framing(requested)
    if recorded is None:
        raise FramingError(f"{what} records no framing (it was made before psyattr recorded framings, or outside "
                           "psyattr): say how its photos must be framed with --framing utkface|omi|none "
                           "(framing=... in Python); none means the images are framed already")
    return Framing.from_json(recorded)


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


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.asarray(points, np.float64) @ matrix[:, :2].T + matrix[:, 2]


def _inverse(matrix: np.ndarray) -> np.ndarray:
    return np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]


def warp(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int], fill: float | Sequence[float]) -> np.ndarray:
    """Resample `image` (H, W[, C]) so that output pixel p shows the input at `inverse(matrix) @ p`; `size` (w, h)."""
    inverse = _inverse(matrix)
    array = np.asarray(image)
    if array.dtype == np.uint8:
        source = Image.fromarray(array)
        fillcolor = tuple(int(round(c)) for c in np.broadcast_to(fill, (3,))) if array.ndim == 3 else int(fill)
        warped = source.transform(size, Image.Transform.AFFINE, data=tuple(inverse.ravel()),
                                  resample=Image.Resampling.BILINEAR, fillcolor=fillcolor)
        return np.asarray(warped, np.uint8)
    if array.ndim != 2:
        raise ValueError(f"only uint8 images or 2-D float maps can be warped, got {array.dtype} {array.shape}")
    warped = Image.fromarray(array.astype(np.float32), mode="F").transform(
        size, Image.Transform.AFFINE, data=tuple(inverse.ravel()), resample=Image.Resampling.BILINEAR,
        fillcolor=float(fill))
    return np.asarray(warped, np.float32)


@dataclasses.dataclass(frozen=True)
class FramedFace:
    """A photo framed for a model: the framed image, the transform from the photo to it, and what was noticed.

    `matrix` maps the photo's continuous pixel coordinates (x, y) to the frame's; `landmarks` are in the frame.
    """

    framing: Framing
    image: np.ndarray
    matrix: np.ndarray
    original_size: tuple[int, int]
    landmarks: Landmarks | None = None
    notes: tuple[str, ...] = ()

    def model_input(self) -> np.ndarray:
        """The model's input: the frame's centre 227 x 227, RGB float32 0..255."""
        crop = self.image[CROP_OFFSET:CROP_OFFSET + CROP_SIZE, CROP_OFFSET:CROP_OFFSET + CROP_SIZE]
        return crop.astype(np.float32)

    def png(self) -> bytes:
        """The framed face (the whole frame) as a PNG file, as the photo signatures take it."""
        import io

        buffer = io.BytesIO()
        Image.fromarray(self.image).save(buffer, format="PNG")
        return buffer.getvalue()

    def input_landmarks(self) -> Landmarks | None:
        """The landmarks in the model-input frame (227 px), or None when the framing used none."""
        if self.landmarks is None:
            return None
        return Landmarks(self.landmarks.points - CROP_OFFSET, self.landmarks.scheme, self.landmarks.source)

    def to_original(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """A map over the model input `(227, 227)` (e.g. a heatmap) warped back onto the photo `(H, W)`."""
        values = np.asarray(values, np.float32)
        if values.shape != (CROP_SIZE, CROP_SIZE):
            raise ValueError(f"expected a ({CROP_SIZE}, {CROP_SIZE}) map over the model input, got {values.shape}")
        to_input = self.matrix - np.array([[0, 0, CROP_OFFSET], [0, 0, CROP_OFFSET]])
        return warp(values, _inverse(to_input), self.original_size, fill)


def _features_outside(landmarks: Landmarks, width: int, height: int) -> float:
    """The share of the eye, eyebrow, nose and mouth points that lie outside a `width` x `height` photo."""
    rings, hulls = (MESH_RINGS, MESH_HULLS) if landmarks.scheme == MESH else (STASM_RINGS, STASM_HULLS)
    names = ("right_eye", "left_eye", "right_eyebrow", "left_eyebrow", "mouth")
    index = sorted({i for name in names for i in rings[name]} | set(hulls["nose"]))
    points = landmarks.points[index]
    outside = (points[:, 0] < 0) | (points[:, 0] > width) | (points[:, 1] < 0) | (points[:, 1] > height)
    return float(outside.mean())


def _frame_filled(matrix: np.ndarray, width: int, height: int) -> float:
    """The share of the model input (the frame's centre crop) that lies outside the photo."""
    steps = CROP_OFFSET + (np.arange(32) + 0.5) * CROP_SIZE / 32
    grid = np.stack(np.meshgrid(steps, steps), axis=-1).reshape(-1, 2)
    source = _apply(_inverse(matrix), grid)
    outside = (source[:, 0] < 0) | (source[:, 0] > width) | (source[:, 1] < 0) | (source[:, 1] > height)
    return float(outside.mean())


def detect_face_landmarks(image: np.ndarray, detector=None, source: str = "the photo") -> tuple[Landmarks, list[str]]:
    """The mesh of the largest face in `image` with notes on what was found; FramingError without a usable face."""
    from psyattr.faces.detector import default_detector

    result = (detector or default_detector())(image)
    if result is None:
        raise FramingError(f"no face found in {source}: it cannot be framed (pass --framing none if the image "
                           "is a face framed already)")
    width = result.box.x1 - result.box.x0
    if width < MIN_FACE_PIXELS:
        raise FramingError(f"the face in {source} is {width:.0f} px wide, under the {MIN_FACE_PIXELS} px minimum: "
                           "use a larger photo of the face")
    notes = [f"{result.faces} faces found, framed the largest"] if result.faces > 1 else []
    return Landmarks(result.points[:, :2], MESH, f"face-mesh detector on {source}"), notes


def frame_image(image: np.ndarray, framing: str | Framing | None, landmarks: Landmarks | None = None,
                detector=None, source: str = "the photo") -> FramedFace:
    """Frame an RGB uint8 photo `(H, W, 3)`: by `landmarks` in its pixels, else the detector's (if it aligns)."""
    framing = get_framing(framing)
    image = np.asarray(image, np.uint8)
    height, width = image.shape[:2]
    size = framing.size
    if not framing.aligns:
        if min(width, height) < MIN_FACE_PIXELS:
            raise FramingError(f"{source} is {width}x{height} px, under the {MIN_FACE_PIXELS} px minimum for a face")
        matrix = np.array([[size / width, 0.0, 0.0], [0.0, size / height, 0.0]])
        resized = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR), np.uint8)
        moved = None if landmarks is None else Landmarks(_apply(matrix, landmarks.points), landmarks.scheme,
                                                         landmarks.source)
        return FramedFace(framing, resized, matrix, (width, height), moved)
    notes: list[str] = []
    if landmarks is None:
        landmarks, notes = detect_face_landmarks(image, detector, source)
    outside = _features_outside(landmarks, width, height)
    if outside > MAX_FEATURES_OUTSIDE:
        raise FramingError(f"the face in {source} is cut off at the photo's border ({outside:.0%} of its eyes, "
                           "eyebrows, nose and mouth lie outside the photo): use a photo that shows the whole face")
    matrix = similarity_transform(anchor_points(landmarks), np.asarray(framing.template))
    filled = _frame_filled(matrix, width, height)
    if filled > FILLED_NOTE:
        notes.append(f"{filled:.0%} of the framed face lies outside the photo: filled with its border colour")
    # Pixels from outside the photo take its mean border colour rather than black.
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).mean(axis=0)
    framed = warp(image, matrix, (size, size), border)
    moved = Landmarks(_apply(matrix, landmarks.points), landmarks.scheme, landmarks.source)
    return FramedFace(framing, framed, matrix, (width, height), moved, tuple(notes))


def frame_file(path: str | os.PathLike, framing: str | Framing | None, landmarks: Landmarks | None = None,
               detector=None) -> FramedFace:
    """Decode an image file (EXIF-rotated, any mode) and frame it; ImageError/FramingError say why not."""
    path = Path(path)
    return frame_image(decode_rgb(path), framing, landmarks, detector, source=str(path))


@dataclasses.dataclass
class FramedBatch:
    """One batch of photos: the positions framed, their framed faces and model inputs, and the (path, reason) failed."""

    indices: list[int]
    faces: list[FramedFace]
    images: np.ndarray
    failed: list[tuple[Path, str]]
    failed_indices: list[int] = dataclasses.field(default_factory=list)


def framed_batches(paths: Sequence[str | os.PathLike], framing: str | Framing | None, batch_size: int,
                   detector=None) -> Iterator[FramedBatch]:
    """Frame photos batch by batch; a photo that cannot be read or framed is named with its reason, the rest go on."""
    paths = [Path(p) for p in paths]
    framing = get_framing(framing)
    for start in range(0, len(paths), batch_size):
        batch = FramedBatch([], [], np.zeros((0, CROP_SIZE, CROP_SIZE, 3), np.float32), [])
        for index in range(start, min(start + batch_size, len(paths))):
            try:
                face = frame_file(paths[index], framing, detector=detector)
            except (ImageError, FileNotFoundError, IsADirectoryError) as err:
                batch.failed.append((paths[index], str(err)))
                batch.failed_indices.append(index)
                continue
            batch.indices.append(index)
            batch.faces.append(face)
        if batch.faces:
            batch.images = np.stack([face.model_input() for face in batch.faces])
        yield batch


def frame_images(paths: Sequence[str | os.PathLike], framing: str | Framing | None,
                 landmarks: Sequence[Landmarks | None] | None = None, cache_dir: str | os.PathLike | None = None,
                 progress: bool = True, detector=None) -> tuple[np.ndarray, np.ndarray]:
    """Framed images `(N_ok, 256, 256, 3)` uint8 of the photos that could be framed, and their indices; cached.

    `landmarks` gives each photo's own landmarks (None where it has none: the detector finds them).
    Photos that cannot be framed are skipped and logged with their reasons.
    """
    from psyattr.data.cache import decode_images

    framing = get_framing(framing)
    paths = [Path(p) for p in paths]
    if landmarks is not None and len(landmarks) != len(paths):
        raise ValueError(f"got {len(landmarks)} landmark sets for {len(paths)} photos")
    digest = hashlib.sha1(json.dumps(framing.to_json(), sort_keys=True).encode())
    if framing.aligns:
        for points in landmarks or [None] * len(paths):
            digest.update(b"detector" if points is None else np.ascontiguousarray(points.points, np.float32).tobytes())

    def load(index: int, path: Path) -> np.ndarray:
        own = landmarks[index] if landmarks is not None else None
        return frame_file(path, framing, own, detector).image

    key = f"{framing.name}-{digest.hexdigest()}"
    return decode_images(paths, framing.size, cache_dir, progress, load=load, key=key)


__all__ = [
    "DEFAULT_FRAMING", "FRAMINGS", "FROM_MODEL", "MIN_FACE_PIXELS", "FramedBatch", "FramedFace", "Framing",
    "FramingError", "anchor_points", "detect_face_landmarks", "frame_file", "frame_image", "frame_images",
    "framed_batches", "get_framing", "register_framing", "resolve_framing", "similarity_transform",
]
