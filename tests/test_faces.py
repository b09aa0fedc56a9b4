"""Face landmarks, regions, occlusion and relevance per region, on real faces (OMI, Yale)."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from psyattr.data.images import load_model_input
from psyattr.data.rated import RatedFaces, read_omi
from psyattr.faces import (
    MESH,
    REGION_NAMES,
    STASM,
    FaceMeshDetector,
    LandmarkError,
    Landmarks,
    build_regions,
    draw_regions,
    load_omi_mesh,
    load_original_rgb,
    occlude,
    read_stasm_landmarks,
    region_shares,
    regions_for_file,
    regions_for_image,
    regions_for_item,
    relevance_spread,
    skin_colour,
)
from psyattr.faces.detector import MODEL_DIR, MODEL_SHA256, ssd_anchors

# Ten OMI faces spread over the data set.
OMI_SAMPLE = range(0, 1000, 100)


@pytest.fixture(scope="module")
def detector() -> FaceMeshDetector:
    return FaceMeshDetector()


@pytest.fixture(scope="module")
def omi(omi_dir: Path) -> RatedFaces:
    return read_omi(omi_dir)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def test_model_files_are_mediapipes():
    for name, digest in MODEL_SHA256.items():
        assert hashlib.sha256((MODEL_DIR / name).read_bytes()).hexdigest() == digest, f"{MODEL_DIR / name} changed"
    assert "Apache License" in (MODEL_DIR / "LICENSE").read_text()


def test_anchors_follow_the_blazeface_layout():
    anchors = ssd_anchors()
    assert anchors.shape == (896, 2)
    # Stride 8: a 16x16 grid, 2 anchors per cell; stride 16: an 8x8 grid, 6 anchors per cell.
    np.testing.assert_allclose(anchors[0], [0.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(anchors[1], anchors[0])
    np.testing.assert_allclose(anchors[2], [1.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(anchors[512], [0.5 / 8, 0.5 / 8])
    np.testing.assert_allclose(anchors[512:518], np.repeat(anchors[512:513], 6, axis=0))
    np.testing.assert_allclose(anchors[-1], [7.5 / 8, 7.5 / 8])


def test_detector_reproduces_mediapipe_landmarks_on_omi(omi, omi_dir, detector):
    # OMI's stored mesh was made by mediapipe 0.10.21 FaceMesh on the same 256 px images: measured here,
    # median 0.31 px, 95th percentile 0.86 px (an input range of [-1, 1] for the mesh model gives 0.95 px).
    errors = []
    for i in OMI_SAMPLE:
        found = detector(load_original_rgb(omi.paths[i]))
        assert found is not None, f"no face found in {omi.paths[i]}"
        stored = load_omi_mesh(omi_dir, omi.ids[i])
        errors.append(np.linalg.norm(found.points[:, :2] - stored.points, axis=1))
    errors = np.stack(errors)
    assert np.median(errors) < 0.6, f"median point error {np.median(errors):.2f} px"
    assert np.percentile(errors, 95) < 1.5, f"95th percentile {np.percentile(errors, 95):.2f} px"
    assert np.median(errors, axis=1).max() < 1.5, "one face's landmarks are off"


def test_detected_regions_agree_with_stored_regions(omi, detector):
    for i in OMI_SAMPLE:
        stored = regions_for_item(omi, i)
        detected = regions_for_file(omi.paths[i], detector)
        assert "npz" in stored.source and "detector" in detected.source
        assert iou(stored["mouth"], detected["mouth"]) > 0.9, f"mouth of {omi.paths[i]}"
        assert iou(stored["eyes"], detected["eyes"]) > 0.7, f"eyes of {omi.paths[i]}"
        assert iou(stored["face"], detected["face"]) > 0.95, f"face of {omi.paths[i]}"


def test_stored_outlines_match_the_omi_region_boxes(omi, omi_dir):
    # face_regions_256px.csv was derived separately from the same mesh: it checks sides and coordinates.
    with open(omi_dir / "face_regions_256px.csv", newline="") as handle:
        boxes = {row["stimulus"]: row for row in csv.DictReader(handle)}
    columns = {"left_eye": "left_eye", "right_eye": "right_eye", "left_eyebrow": "left_eyebrow",
               "right_eyebrow": "right_eyebrow", "mouth": "lips", "nose": "nose", "face": "face_oval"}
    for i in OMI_SAMPLE:
        regions = regions_for_item(omi, i)
        row = boxes[omi.ids[i]]
        for ours, theirs in columns.items():
            # Outlines are in the model-input frame: 14 px of the 256 px image are cropped on each side.
            outline = regions.outlines[ours] + 14
            box = [float(row[f"{theirs}_{corner}"]) for corner in ("x0", "y0", "x1", "y1")]
            np.testing.assert_allclose(np.r_[outline.min(axis=0), outline.max(axis=0)], box, atol=0.15,
                                       err_msg=f"{ours} of OMI stimulus {omi.ids[i]}")


def test_regions_lie_where_the_features_are(omi):
    regions = regions_for_item(omi, 0)
    assert list(regions.masks) == list(REGION_NAMES)
    for name, mask in regions.masks.items():
        assert mask.shape == (227, 227) and mask.dtype == bool and mask.sum() > 15, name
    assert regions.outside == []
    # Left and right are the subject's: the subject's right eye is on the image's left.
    assert centroid(regions["right_eye"])[0] < centroid(regions["left_eye"])[0]
    assert centroid(regions["right_cheek"])[0] < centroid(regions["nose"])[0] < centroid(regions["left_cheek"])[0]
    heights = [centroid(regions[name])[1] for name in ("eyebrows", "eyes", "nose", "mouth")]
    assert heights == sorted(heights)
    for name in ("eyes", "eyebrows", "nose", "mouth", "cheeks"):
        assert (regions[name] & ~regions["face"]).sum() < 0.05 * regions[name].sum(), f"{name} sticks out of the face"
    assert not (regions["cheeks"] & regions.union("nose", "mouth", "eyes")).any()
    np.testing.assert_array_equal(regions["eyes"], regions["left_eye"] | regions["right_eye"])


def test_detector_finds_every_yale_face(yale_dir, detector):
    paths = sorted(yale_dir.glob("*.gif"))
    assert len(paths) == 59
    for path in paths:
        image = load_original_rgb(path)
        found = detector(image)
        assert found is not None, f"no face found in {path}"
        points = found.points
        # The subject's right eye corner (33) left of the left one (263); eyes above the nose tip above the lips.
        assert points[33, 0] < points[263, 0] and points[159, 1] < points[1, 1] < points[13, 1], path
        # The faces sit in the middle of the 320x243 frame.
        assert 80 < points[1, 0] < 240 and 40 < points[1, 1] < 220, path


def test_no_face_gives_none(yale_dir, detector, tmp_path):
    wall = load_original_rgb(yale_dir / "subject01.happy.gif")[:90, :90]
    assert detector(wall) is None
    assert detector(np.full((227, 227, 3), 128, np.uint8)) is None
    Image.fromarray(wall).save(tmp_path / "wall.png")
    assert regions_for_file(tmp_path / "wall.png", detector) is None
    assert regions_for_image(np.full((227, 227, 3), 128.0, np.float32), detector) is None


def test_regions_of_a_model_input_image(omi, detector):
    image = load_model_input(omi.paths[0])
    detected = regions_for_image(image, detector)
    assert iou(detected["mouth"], regions_for_item(omi, 0)["mouth"]) > 0.85
    with pytest.raises(ValueError, match="regions_for_file"):
        regions_for_image(load_original_rgb(omi.paths[0]), detector)


# Mesh points standing in for Stasm's 77 (a pair is averaged; 468/469 are the eye-ring centres).
STASM_FROM_MESH = [
    127, 234, (93, 132), 58, 136, 149, 152, 378, 365, 288, (323, 361), 454, 356,  # jaw, temple to temple
    333, 151, 104,  # forehead, viewer's right to left
    107, 105, 70, 53, 65, 55, 285, 336, 334, 300, 283, 295,  # eyebrows, viewer's left then right
    27, 257,  # eyelids
    133, 158, 159, 160, 33, 144, 145, 153, 468, 469, 362, 385, 386, 387, 263, 373, 374, 380,  # eyes and pupils
    351, 197, 122, 45, 4, 275, 294, 327, 2, 98, 64,  # nose
    61, 40, 37, 0, 267, 270, 291, 311, 13, 81, 178, 14, 402, 321, 314, 17, 84, 91,  # mouth
]


def stasm_from_mesh(mesh: np.ndarray) -> np.ndarray:
    rings = [[33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7],
             [263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249]]
    points = np.concatenate([mesh, [mesh[ring].mean(axis=0) for ring in rings]])
    return np.array([points[list(k)].mean(axis=0) if isinstance(k, tuple) else points[k] for k in STASM_FROM_MESH])


def test_stasm_landmark_files_give_the_same_regions(omi, omi_dir, tmp_path):
    # A 10k-style data set: the OMI images with 77-point files written in Stasm's order and pixel convention.
    ids, paths, files = [], [], {}
    for i in OMI_SAMPLE:
        mesh = load_omi_mesh(omi_dir, omi.ids[i]).points
        file = tmp_path / f"{omi.ids[i]}_landmarks.txt"
        file.write_text("".join(f"{x - 0.5:.2f} {y - 0.5:.2f}\n" for x, y in stasm_from_mesh(mesh)))
        ids.append(omi.ids[i])
        paths.append(omi.paths[i])
        files[omi.ids[i]] = file
    stasm_faces = RatedFaces("10k-style", ids, paths, {}, (1.0, 9.0), landmarks=files)
    agreement = {name: [] for name in REGION_NAMES}
    for k, i in enumerate(OMI_SAMPLE):
        from_stasm = regions_for_item(stasm_faces, k)
        assert from_stasm.landmarks.scheme == STASM and files[ids[k]].name in from_stasm.source
        from_mesh = regions_for_item(omi, i)
        for name in REGION_NAMES:
            agreement[name].append(iou(from_stasm[name], from_mesh[name]))
    medians = {name: np.median(values) for name, values in agreement.items()}
    # Stasm outlines have fewer points (eyes 8, brows 6): a swapped side or a shifted frame would give ~0.
    least = {"eye": 0.85, "mouth": 0.9, "nose": 0.85, "face": 0.8, "eyebrow": 0.7, "cheek": 0.6}
    for name in REGION_NAMES:
        kind = name.removeprefix("left_").removeprefix("right_").removesuffix("s")
        assert medians[name] > least[kind], f"{name}: median IoU {medians[name]:.2f}"


def test_stasm_reader_rejects_broken_files(tmp_path):
    short = tmp_path / "1_landmarks.txt"
    short.write_text("1 2\n" * 76)
    with pytest.raises(LandmarkError, match="1_landmarks.txt holds 76 points"):
        read_stasm_landmarks(short)
    garbled = tmp_path / "2_landmarks.txt"
    garbled.write_text("1 2\n" * 70 + "x y\n" + "1 2\n" * 6)
    with pytest.raises(LandmarkError, match="2_landmarks.txt"):
        read_stasm_landmarks(garbled)


def test_regions_partly_outside_are_clipped_and_flagged(omi, omi_dir):
    stored = load_omi_mesh(omi_dir, omi.ids[0]).to_model_input((256, 256))
    inside = build_regions(stored)
    # Move the face 100 px to the right: its left half (the subject's left side) leaves the image.
    shifted = build_regions(Landmarks(stored.points + [100, 0], MESH, "shifted"))
    assert "left_eye" in shifted.outside and not shifted["left_eye"].any()
    assert shifted.visible["right_eye"] == 1.0 and shifted["right_eye"].sum() == inside["right_eye"].sum()
    assert 0.3 < shifted.visible["face"] < 0.8
    assert shifted["face"].sum() == pytest.approx(shifted.visible["face"] * inside["face"].sum(), rel=0.02)


def test_occlusion_covers_the_region_with_skin(omi):
    image = load_model_input(omi.paths[1])  # a broad smile showing teeth
    regions = regions_for_item(omi, 1)
    original = image.copy()
    covered = occlude(image, "mouth", regions)
    np.testing.assert_array_equal(image, original)
    assert covered.shape == image.shape and covered.dtype == np.float32
    skin = skin_colour(image, regions)
    mouth = regions["mouth"]
    np.testing.assert_allclose(covered[mouth], np.broadcast_to(skin, covered[mouth].shape), atol=1e-3)
    # Teeth and lips were far from the skin colour; the cheeks' own colour is close to it.
    distance = {name: np.linalg.norm(image[regions[name]].mean(axis=0) - skin) for name in ("mouth", "cheeks")}
    assert distance["mouth"] > 2 * distance["cheeks"], distance
    # Only the mouth and a few pixels around it change; the edge fades instead of stepping.
    changed = np.abs(covered - image).max(axis=-1) > 0.5
    assert changed.sum() < 2.5 * mouth.sum()
    np.testing.assert_array_equal(covered[regions["eyes"]], image[regions["eyes"]])
    edge = changed & ~mouth
    fraction = np.abs(covered - image)[edge].max(axis=-1) / np.abs(skin - image)[edge].max(axis=-1)
    assert (fraction < 0.9).mean() > 0.3


def test_occlusion_needs_a_colour_source(omi):
    image = load_model_input(omi.paths[0])
    regions = regions_for_item(omi, 0)
    with pytest.raises(ValueError, match="regions="):
        occlude(image, "mouth")
    with pytest.raises(ValueError, match="colour= or regions="):
        occlude(image, regions["mouth"])
    grey = occlude(image, regions["mouth"], colour=[128, 128, 128], dilation=0, softness=0)
    assert (grey[regions["mouth"]] == 128).all() and (grey[~regions["mouth"]] == image[~regions["mouth"]]).all()


def test_region_shares_and_spread(omi):
    regions = regions_for_item(omi, 0)
    mouth = regions["mouth"]
    heat = np.where(mouth, 1.0, 0.0) - np.where(regions["eyes"], 2.0, 0.0)
    shares = region_shares(heat, regions)
    assert shares["mouth"] == pytest.approx(1.0) and shares["face"] == pytest.approx(1.0)
    assert shares["eyes"] == 0.0 and shares["cheeks"] == 0.0
    absolute = region_shares(heat, regions, absolute=True)
    eyes_mass = 2 * regions["eyes"].sum()
    assert absolute["eyes"] == pytest.approx(eyes_mass / (eyes_mass + mouth.sum()))
    assert np.isnan(region_shares(-np.ones((227, 227)), regions)["mouth"])
    # Spread: the share of pixels that hold half the positive relevance.
    assert relevance_spread(np.ones((227, 227))) == pytest.approx(0.5, abs=1e-4)
    assert relevance_spread(heat) == pytest.approx(0.5 * mouth.sum() / mouth.size, abs=2 / mouth.size)
    peak = np.zeros((227, 227))
    peak[100, 100] = 5.0
    assert relevance_spread(peak) == 1 / peak.size
    with pytest.raises(ValueError, match="sum the colour channels"):
        region_shares(np.ones((227, 227, 3)), regions)


def test_region_outlines_are_drawn(omi):
    image = load_model_input(omi.paths[0])
    regions = regions_for_item(omi, 0)
    figure = draw_regions(image, regions, names=["mouth", "eyes"], scale=3)
    assert figure.shape == (681, 681, 3) and figure.dtype == np.uint8
    red = (figure[..., 0] == 255) & (figure[..., 1] == 40) & (figure[..., 2] == 40)
    ys, xs = np.nonzero(red)
    outline = regions.outlines["mouth"] * 3
    assert red.sum() > 100
    assert outline[:, 0].min() - 3 <= xs.min() and xs.max() <= outline[:, 0].max() + 3
    with pytest.raises(KeyError, match="forehead"):
        draw_regions(image, regions, names=["forehead"])
