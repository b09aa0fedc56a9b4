"""Framing: the eyes and mouth land where a framing's template puts them, on real faces; clear refusals otherwise."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from psyattr.faces import FROM_MODEL, FramingError, Framing, frame_file, frame_image, get_framing, resolve_framing
from psyattr.faces.framing import CROP_OFFSET, anchor_points, similarity_transform
from psyattr.faces.sources import detect_landmarks, load_original_rgb


@pytest.mark.parametrize("name", ["utkface", "omi"])
def test_framing_puts_eyes_and_mouth_on_the_template(yale_dir, name):
    framing = get_framing(name)
    face = frame_file(yale_dir / "subject02.sad.gif", name)
    assert face.image.shape == (256, 256, 3) and face.image.dtype == np.uint8
    model_input = face.model_input()
    assert model_input.shape == (227, 227, 3) and model_input.dtype == np.float32
    # The detector's own landmarks, moved by the fitted transform, sit on the template within a few pixels.
    assert np.abs(anchor_points(face.landmarks) - np.asarray(framing.template)).max() < 6.0
    # Detecting again on the framed face finds the eyes and mouth there too.
    again = detect_landmarks(face.image)
    assert np.abs(anchor_points(again) - np.asarray(framing.template)).max() < 8.0
    assert np.allclose(face.input_landmarks().points, face.landmarks.points - CROP_OFFSET)


def test_utkface_frames_tighter_than_omi(yale_dir):
    utk, omi = (frame_file(yale_dir / "subject02.sad.gif", name) for name in ("utkface", "omi"))
    eyes = [np.linalg.norm(np.subtract(*anchor_points(f.landmarks)[:2])) for f in (utk, omi)]
    assert eyes[0] / eyes[1] == pytest.approx(101.5 / 63.4, rel=0.05)


def test_the_fitted_transform_is_a_similarity():
    template = np.asarray(get_framing("omi").template)
    angle, scale = 0.3, 1.7
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = template @ rotation.T + [5.0, -3.0]
    matrix = similarity_transform(moved, template)
    np.testing.assert_allclose(moved @ matrix[:, :2].T + matrix[:, 2], template, atol=1e-9)


def test_a_heatmap_warps_back_onto_the_photo(yale_dir):
    photo = load_original_rgb(yale_dir / "subject02.sad.gif")
    face = frame_image(photo, "utkface")
    ones = face.to_original(np.ones((227, 227), np.float32))
    assert ones.shape == photo.shape[:2]
    # The model input covers the face: its centre in the photo is inside the warped-back area.
    centre = anchor_points(detect_landmarks(photo)).mean(axis=0).round().astype(int)
    assert ones[centre[1], centre[0]] == pytest.approx(1.0)
    assert 0.05 < ones.mean() < 0.95
    with pytest.raises(ValueError, match=r"expected a \(227, 227\) map"):
        face.to_original(np.ones((10, 10)))


def test_none_resizes_the_image_as_given(yale_dir):
    photo = load_original_rgb(yale_dir / "subject02.sad.gif")
    face = frame_image(photo, None)
    assert face.framing.name == "none" and face.image.shape == (256, 256, 3) and face.landmarks is None
    expected = np.asarray(Image.fromarray(photo).resize((256, 256), Image.Resampling.BILINEAR))
    assert np.array_equal(face.image, expected)


def test_photos_that_cannot_be_framed_say_why(tmp_path):
    Image.new("RGB", (200, 200), (128, 128, 128)).save(tmp_path / "wall.png")
    with pytest.raises(FramingError, match=r"no face found in .*wall.png.*--framing none"):
        frame_file(tmp_path / "wall.png", "utkface")
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    with pytest.raises(FramingError, match=r"1x1 px, under the 40 px minimum"):
        frame_file(tmp_path / "dot.png", "none")


def test_framings_round_trip_through_their_records_and_models_must_record_one():
    for name in ("utkface", "omi", "none"):
        assert Framing.from_json(get_framing(name).to_json()) is get_framing(name)
    custom = Framing("lab", ((90.0, 100.0), (166.0, 100.0), (128.0, 180.0)), "our lab's framing")
    assert Framing.from_json(custom.to_json()) == custom
    with pytest.raises(ValueError, match="a 300 px frame"):
        Framing.from_json({**custom.to_json(), "size": 300})
    with pytest.raises(ValueError, match="unknown framing 'ffhq'"):
        get_framing("ffhq")
    assert resolve_framing(FROM_MODEL, get_framing("omi").to_json(), "model x").name == "omi"
    assert resolve_framing(None, get_framing("omi").to_json(), "model x").name == "none"
    with pytest.raises(FramingError, match="model x records no framing"):
        resolve_framing(FROM_MODEL, None, "model x")
