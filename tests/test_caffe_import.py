"""The Caffe importer, checked against OpenCV's independent Caffe runtime on real faces."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from psyattr.models.caffe import (
    CaffeImportError,
    deploy_prototxt,
    load_caffe,
    read_caffemodel,
    write_caffemodel,
    write_mean,
)
from psyattr.models.layers import LEVI_HASSNER_BGR_MEAN

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (the test extra) is the Caffe oracle")

# Caffe layouts: conv (out, in, h, w), inner product (out, in).
CAFFE_SHAPES = {"conv1": (96, 3, 7, 7), "conv2": (256, 96, 5, 5), "conv3": (384, 256, 3, 3),
                "fc6": (512, 18816), "fc7": (512, 512)}


def random_blobs(classes: int, seed: int) -> dict[str, list[np.ndarray]]:
    """Random Caffe-layout weights and random biases, scaled so activations stay at a useful size."""
    rng = np.random.default_rng(seed)
    shapes = {**CAFFE_SHAPES, "fc8": (classes, 512)}
    blobs = {}
    for name, shape in shapes.items():
        fan_in = int(np.prod(shape[1:]))
        weights = rng.normal(0, 1.2 / np.sqrt(fan_in), shape).astype(np.float32)
        blobs[name] = [weights, rng.normal(0.1, 0.5, shape[0]).astype(np.float32)]
    return blobs


def write_caffe_files(folder: Path, task: str, classes: int, v1: bool, seed: int = 0):
    prototxt, caffemodel, mean = folder / "deploy.prototxt", folder / "net.caffemodel", folder / "mean.binaryproto"
    prototxt.write_text(deploy_prototxt(task, v1=v1))
    write_caffemodel(caffemodel, random_blobs(classes, seed), v1=v1)
    write_mean(mean, LEVI_HASSNER_BGR_MEAN)
    return prototxt, caffemodel, mean


def opencv_outputs(prototxt: Path, caffemodel: Path, images_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    blob = (images_rgb[..., ::-1] - np.asarray(LEVI_HASSNER_BGR_MEAN, np.float32)).transpose(0, 3, 1, 2)
    net.setInput(np.ascontiguousarray(blob, dtype=np.float32))
    fc8, prob = net.forward(["fc8", "prob"])
    return fc8.reshape(len(images_rgb), -1), prob.reshape(len(images_rgb), -1)


def keras_outputs(model: keras.Model, images_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probe = keras.Model(model.inputs, [model.get_layer("fc8").output, model.output])
    fc8, prob = probe.predict(images_rgb, verbose=0)
    return fc8, prob


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("task, classes, v1", [("age", 8, False), ("gender", 2, True)])
def test_imported_model_matches_opencv_on_real_faces(tmp_path, face_images, task, classes, v1):
    prototxt, caffemodel, mean = write_caffe_files(tmp_path, task, classes, v1)
    model = load_caffe(prototxt, caffemodel, task, mean)
    cv_fc8, cv_prob = opencv_outputs(prototxt, caffemodel, face_images)
    k_fc8, k_prob = keras_outputs(model, face_images)
    assert len(face_images) >= 8
    assert np.abs(cv_fc8).max() > 1.0  # logits of a useful size, not a degenerate net
    fc8_diff, prob_diff = relative_difference(k_fc8, cv_fc8), float(np.abs(k_prob - cv_prob).max())
    print(f"{task} (v1={v1}): max |fc8 diff| / max |fc8| = {fc8_diff:.2e}, max |prob diff| = {prob_diff:.2e}")
    assert fc8_diff <= 1e-4
    assert prob_diff <= 1e-4
    # The images are told apart: the comparison is not between two constant outputs.
    assert np.ptp(cv_fc8 - cv_fc8.mean(axis=1, keepdims=True), axis=0).max() > 0.1


def test_negative_control_wrong_fc6_order_is_caught(tmp_path, face_images):
    prototxt, caffemodel, mean = write_caffe_files(tmp_path, "age", 8, v1=False)
    model = load_caffe(prototxt, caffemodel, "age", mean)
    blob, bias = read_caffemodel(caffemodel)["fc6"]
    model.get_layer("fc6").set_weights([blob.T, bias])  # Caffe's (C, H, W) order taken as Keras' (H, W, C)
    cv_fc8, _ = opencv_outputs(prototxt, caffemodel, face_images)
    k_fc8, _ = keras_outputs(model, face_images)
    assert relative_difference(k_fc8, cv_fc8) > 1e-2


def test_cli_import_caffe_writes_a_matching_keras_file(tmp_path, face_images):
    from click.testing import CliRunner

    from psyattr.cli import cli

    prototxt, caffemodel, mean = write_caffe_files(tmp_path, "gender", 2, v1=False, seed=3)
    out = tmp_path / "gender.keras"
    result = CliRunner().invoke(cli, ["import-caffe", str(prototxt), str(caffemodel), "--task", "gender",
                                      "--mean", str(mean), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    model = keras.models.load_model(out)
    cv_fc8, _ = opencv_outputs(prototxt, caffemodel, face_images)
    assert relative_difference(keras_outputs(model, face_images)[0], cv_fc8) <= 1e-4


def test_gender_caffemodel_into_the_age_net_names_fc8_and_both_shapes(tmp_path):
    write_caffemodel(tmp_path / "gender.caffemodel", random_blobs(2, 0))
    (tmp_path / "age.prototxt").write_text(deploy_prototxt("age"))
    with pytest.raises(CaffeImportError) as err:
        load_caffe(tmp_path / "age.prototxt", tmp_path / "gender.caffemodel", "age")
    message = str(err.value)
    assert "'fc8'" in message and "(2, 512)" in message and "(8, 512)" in message
    assert "--task gender" in message


def test_prototxt_and_caffemodel_that_do_not_match(tmp_path):
    (tmp_path / "gender.prototxt").write_text(deploy_prototxt("gender"))
    write_caffemodel(tmp_path / "age.caffemodel", random_blobs(8, 0))
    with pytest.raises(CaffeImportError, match=r"layer 'fc8': prototxt .* declares num_output 2, the age_net has 8"):
        load_caffe(tmp_path / "gender.prototxt", tmp_path / "age.caffemodel", "age")


def test_truncated_and_foreign_files_are_refused_by_name(tmp_path, omi_dir):
    prototxt, caffemodel, _ = write_caffe_files(tmp_path, "age", 8, v1=False)
    truncated = tmp_path / "truncated.caffemodel"
    truncated.write_bytes(caffemodel.read_bytes()[: caffemodel.stat().st_size // 3])
    with pytest.raises(CaffeImportError, match=r"truncated.caffemodel is not a binary Caffe model"):
        load_caffe(prototxt, truncated, "age")
    jpeg = omi_dir / "images_256" / "1.jpg"
    with pytest.raises(CaffeImportError, match=r"1.jpg"):
        load_caffe(prototxt, jpeg, "age")
    with pytest.raises(CaffeImportError, match=r"is not a Caffe prototxt"):
        load_caffe(caffemodel, caffemodel, "age")


def test_missing_layer_is_named(tmp_path):
    blobs = random_blobs(8, 0)
    del blobs["conv2"]
    write_caffemodel(tmp_path / "partial.caffemodel", blobs)
    (tmp_path / "age.prototxt").write_text(deploy_prototxt("age"))
    with pytest.raises(CaffeImportError, match=r"has no weights for layer 'conv2'"):
        load_caffe(tmp_path / "age.prototxt", tmp_path / "partial.caffemodel", "age")
