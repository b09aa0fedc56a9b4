"""The Keras Levi-Hassner nets: architecture, layer names, groups and freezing, `.keras` round trips."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import psyattr
from psyattr.models import build_base_model, freeze, set_trainable_groups, trainable_groups, unfreeze
from psyattr.models.groups import group_layers

CAFFE_LAYERS = ["conv1", "relu1", "pool1", "norm1", "conv2", "relu2", "pool2", "norm2", "conv3", "relu3",
                "pool5", "fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8", "prob"]


@pytest.mark.parametrize("task, classes", [("age", 8), ("gender", 2)])
def test_architecture_matches_caffe(task, classes):
    model = build_base_model(task)
    names = [layer.name for layer in model.layers]
    assert [n for n in names if n in CAFFE_LAYERS] == CAFFE_LAYERS
    assert model.input_shape == (None, 227, 227, 3)
    assert model.get_layer("fc6").kernel.shape == (18816, 512)
    assert model.get_layer("pool1").output.shape[1:] == (28, 28, 96)
    assert model.get_layer("pool5").output.shape[1:] == (7, 7, 384)
    assert model.get_layer("fc8").units == classes
    assert model.output_shape == (None, classes)


def test_unknown_task_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown task 'emotion': expected one of 'age', 'gender'"):
        build_base_model("emotion")


def test_caffe_lrn_matches_the_caffe_formula():
    from psyattr.models.layers import CaffeLRN

    x = np.random.default_rng(0).normal(0, 50, (2, 4, 4, 7)).astype("float32")
    got = np.asarray(CaffeLRN(5, 1e-4, 0.75)(x))
    padded = np.pad(x**2, ((0, 0), (0, 0), (0, 0), (2, 2)))
    window = sum(padded[..., i : i + 7] for i in range(5))
    want = x / (1 + 1e-4 / 5 * window) ** 0.75
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_groups_cover_the_caffe_layers():
    model = build_base_model("gender")
    assert [layer.name for layer in group_layers(model, "dense")] == ["fc6", "relu6", "drop6", "fc7", "relu7", "drop7"]
    assert [layer.name for layer in group_layers(model, "head")] == ["fc8", "prob"]
    assert "conv1" in [layer.name for layer in group_layers(model, "features")]
    with pytest.raises(ValueError, match="unknown layer group"):
        freeze(model, "convs")


def test_freezing_recompiles_and_changes_only_fc6_to_fc8(face_images):
    model = build_base_model("gender")
    model.compile(keras.optimizers.SGD(1e-3, momentum=0.9), "sparse_categorical_crossentropy")
    labels = np.arange(len(face_images)) % 2
    model.fit(face_images[:2], labels[:2], verbose=0)  # builds the optimizer for all weights
    freeze(model, "features")
    assert trainable_groups(model) == {"dense", "head"}
    before = {layer.name: [w.copy() for w in layer.get_weights()] for layer in model.layers if layer.weights}
    model.fit(face_images, labels, epochs=2, batch_size=5, verbose=0)
    changed = {name for name, old in before.items()
               if any(not np.array_equal(a, b) for a, b in zip(old, model.get_layer(name).get_weights()))}
    assert changed == {"fc6", "fc7", "fc8"}

    unfreeze(model, "features")
    assert trainable_groups(model) == {"features", "dense", "head"}
    conv1 = model.get_layer("conv1").get_weights()[0].copy()
    model.fit(face_images, labels, epochs=1, batch_size=5, verbose=0)
    assert not np.array_equal(conv1, model.get_layer("conv1").get_weights()[0])


def test_set_trainable_groups_on_an_uncompiled_model_leaves_it_uncompiled():
    model = set_trainable_groups(build_base_model("age"), ["head"])
    assert not model.compiled
    assert trainable_groups(model) == {"head"}
    assert len(model.trainable_weights) == 2


@pytest.mark.slow
def test_keras_file_round_trips_bit_exactly_in_a_fresh_process(tmp_path, face_images):
    model = build_base_model("age")
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([rng.normal(0, 0.01, w.shape).astype("float32") for w in layer.get_weights()])
    path = tmp_path / "age.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", face_images)
    np.save(tmp_path / "want.npy", model.predict(face_images, verbose=0))
    script = textwrap.dedent(f"""
        import numpy as np, keras, psyattr
        model = keras.models.load_model({str(path)!r})
        got = model.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0)
        want = np.load({str(tmp_path / 'want.npy')!r})
        assert model.get_layer("norm1").__class__.__name__ == "CaffeLRN"
        print("equal" if np.array_equal(got, want) else f"differs by {{np.abs(got - want).max()}}")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.stdout.strip().splitlines()[-1:] == ["equal"], result.stderr[-2000:]


def test_version_is_exposed():
    assert psyattr.__version__.count(".") == 2
