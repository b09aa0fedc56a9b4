"""The shipped base nets: both presets load offline, pass their hash check, and classify held-out UTKFace faces."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from psyattr.data.images import load_model_input
from psyattr.data.labels import age_to_group
from psyattr.data.utkface import parse_utkface_name
from psyattr.models import build_base_model
from psyattr.models.weights import PRESET_DIR, WeightsError, available_presets, preset_arrays

PRESET = "utkface"


def test_both_presets_are_listed_with_their_cards():
    presets = available_presets()
    assert set(presets[PRESET]) == {"age", "gender"}
    total = sum((PRESET_DIR / entry["file"]).stat().st_size for entry in presets[PRESET].values())
    assert total <= 60e6
    for task in ("age", "gender"):
        card = (PRESET_DIR / f"{task}_{PRESET}.md").read_text()
        assert "non-commercial research" in card and "Held-out test split" in card


def held_out(task: str, utkface_dir, count: int):
    names = (PRESET_DIR / f"{task}_{PRESET}_test_split.txt").read_text().split()
    paths = [utkface_dir / "images" / name for name in names[:count]]
    labels = []
    for path in paths:
        age, gender = parse_utkface_name(path.name)
        labels.append(age_to_group(age) if task == "age" else gender)
    return np.stack([load_model_input(p) for p in paths]), np.asarray(labels)


@pytest.mark.parametrize("task, least", [("gender", 0.8), ("age", 0.4)])
def test_preset_classifies_held_out_faces(utkface_dir, task, least):
    model = build_base_model(task, weights=PRESET)
    images, labels = held_out(task, utkface_dir, 60)
    predicted = np.argmax(model.predict(images, verbose=0), axis=1)
    assert np.mean(predicted == labels) >= least
    assert predicted[np.argmax(predicted == labels)] == labels[np.argmax(predicted == labels)]
    if task == "age":
        assert np.mean(np.abs(predicted - labels) <= 1) >= 0.7


def test_a_damaged_preset_is_refused(tmp_path, monkeypatch):
    entry = available_presets()[PRESET]["gender"]
    damaged = tmp_path / entry["file"]
    shutil.copy(PRESET_DIR / entry["file"], damaged)
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    monkeypatch.setattr("psyattr.models.weights.PRESET_DIR", tmp_path)
    with pytest.raises(WeightsError, match="is damaged: SHA-256 .* reinstall psyattr"):
        preset_arrays(PRESET, "gender")


def test_unknown_preset_lists_the_shipped_ones():
    with pytest.raises(WeightsError, match=r"no preset 'imdb' for the age net; shipped presets: utkface \(age, gender\)"):
        build_base_model("age", weights="imdb")


def test_a_failed_load_leaves_the_model_untouched(tmp_path):
    from psyattr.models.weights import load_weights_into

    model = build_base_model("age")
    before = model.get_layer("conv1").get_weights()[0].copy()
    other = build_base_model("gender")
    other.save(tmp_path / "gender.keras")
    with pytest.raises(WeightsError, match="layer 'fc8'"):
        load_weights_into(model, tmp_path / "gender.keras", task="age")
    np.testing.assert_array_equal(model.get_layer("conv1").get_weights()[0], before)


@pytest.mark.parametrize("task", ["age", "gender"])
def test_lrp_on_the_trained_nets(utkface_dir, task):
    from psyattr.lrp import LRPExplainer

    model = build_base_model(task, weights=PRESET)
    images, labels = held_out(task, utkface_dir, 4)
    jit = LRPExplainer(model, "alpha2beta1", jit_compile=True)(images, labels)
    eager = LRPExplainer(model, "alpha2beta1", jit_compile=False)(images, labels)
    assert np.isfinite(jit.relevance).all()
    # Per image, relative to its largest relevance: trained nets have units whose pre-activation sits within
    # rounding of zero, so XLA's and TensorFlow's kernels disagree a little more than on the random nets.
    for fast, slow in zip(jit.relevance, eager.relevance):
        assert np.abs(fast - slow).max() <= 2e-4 * np.abs(slow).max()
    # The face carries more of the relevance than the border: the central quarter of the image (where the
    # aligned faces are) holds clearly more than the quarter that evenly spread relevance would give it.
    heat = np.abs(jit.relevance.sum(-1))
    centre = heat[:, 57:170, 57:170].sum(axis=(1, 2)) / heat.sum(axis=(1, 2))
    assert centre.mean() > 0.3


def test_the_installed_package_carries_the_weights_and_the_face_models():
    import importlib.metadata

    files = {str(f) for f in importlib.metadata.files("psyattr") or []}
    if not any(f.endswith(".py") and f.startswith("psyattr/") for f in files):
        pytest.skip("psyattr is installed in editable mode: its files are the source tree's, not an installed copy")
    for task in ("age", "gender"):
        assert f"psyattr/models/presets/{task}_{PRESET}.npz" in files
        assert f"psyattr/models/presets/{task}_{PRESET}.md" in files
    assert "psyattr/models/presets/presets.json" in files
    assert {"psyattr/faces/models/face_landmark.tflite", "psyattr/faces/models/face_detection_short_range.tflite"} <= files
