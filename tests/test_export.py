"""SavedModel exports: layout, signatures, atomic versions, and loading through TF Serving's own loaders."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import time
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from PIL import Image
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

import psyattr.export
from psyattr.cli import cli
from psyattr.export import ExportError, export_model, list_versions
from psyattr.models.weights import recorded_framing
from tests.serving_models import (EXPLAIN_EXTRA_KEYS, GENDER_KEYS, REGRESSOR_KEYS, assert_heatmaps_close,
                                  assert_predictions_close, expected_explanations, expected_predictions,
                                  framed_inputs, framed_pngs, random_regressor)
from tests.test_lrp_explainer import random_net
from tests.tf_serving_loaders import LOADERS

ROOT = Path(__file__).resolve().parents[1]
# Per image: the top output, an index, and a name valid for both models ("1" and "0" exist in both).
TARGETS = np.array([b"", b"1", b"0"], dtype=object)


@pytest.fixture(scope="module")
def models(face_images):
    return {"psyattr_regressor": random_regressor(11, face_images), "psyattr_gender": random_net("gender", 12, False),
            # ridge mode's head sits on the root-scaled pool5 features: its own layer must export and explain too
            "psyattr_ridge": random_regressor(13, face_images, mode="ridge")}


@pytest.fixture(scope="module")
def exports(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("saved_models")
    return root, {name: export_model(model, root, name) for name, model in models.items()}


@pytest.fixture(scope="module")
def images(face_images):
    return face_images[:3]


@pytest.fixture(scope="module")
def expected(models, images):
    """Per model: serving_default by hand, and the in-process explanations without and with XLA."""
    return {name: {"serving_default": expected_predictions(model, images),
                   "explain": expected_explanations(model, images, TARGETS),
                   "explain_xla": expected_explanations(model, images, TARGETS, xla=True)}
            for name, model in models.items()}


def read_signatures(version_dir: Path):
    saved = saved_model_pb2.SavedModel.FromString((version_dir / "saved_model.pb").read_bytes())
    (meta_graph,) = saved.meta_graphs
    return meta_graph.signature_def


def test_a_version_folder_has_the_tf_serving_layout_and_stores_each_weight_once(exports, models):
    root, paths = exports
    for name, path in paths.items():
        assert path == root / name / "1"
        assert sorted(p.name for p in (root / name).iterdir()) == ["1"]  # no staging folder left behind
        assert (path / "saved_model.pb").is_file() and (path / "variables" / "variables.index").is_file()
        assert (path / "assets.extra" / "tf_serving_warmup_requests").is_file()
        stored = [(key, shape) for key, shape in tf.train.list_variables(str(path / "variables" / "variables"))
                  if key.endswith("VARIABLE_VALUE")]
        assert len(stored) == len(models[name].weights)
        assert sum(int(np.prod(shape)) for _, shape in stored) == models[name].count_params()


def test_signatures_have_the_documented_inputs_and_outputs(exports):
    _, paths = exports
    for path, keys in ((paths["psyattr_regressor"], REGRESSOR_KEYS), (paths["psyattr_gender"], GENDER_KEYS)):
        signatures = read_signatures(path)
        assert {"serving_default", "explain", "explain_xla"} <= set(signatures)
        default = signatures["serving_default"]
        assert list(default.inputs) == ["image"]
        assert [d.size for d in default.inputs["image"].tensor_shape.dim] == [-1, 227, 227, 3]
        assert default.inputs["image"].dtype == tf.float32.as_datatype_enum
        assert set(default.outputs) == keys
        assert all([d.size for d in o.tensor_shape.dim] == [-1] for o in default.outputs.values())
        for name in ("explain", "explain_xla"):
            explain = signatures[name]
            assert set(explain.inputs) == {"image", "target"}
            assert explain.inputs["target"].dtype == tf.string.as_datatype_enum
            assert set(explain.outputs) == keys | EXPLAIN_EXTRA_KEYS
            assert [d.size for d in explain.outputs["heatmap"].tensor_shape.dim] == [-1, 227, 227]
            assert explain.outputs["target"].dtype == tf.string.as_datatype_enum


def test_warmup_records_are_predict_requests_for_the_signatures_any_server_runs(exports):
    _, paths = exports
    path = paths["psyattr_gender"] / "assets.extra" / "tf_serving_warmup_requests"
    records = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path))]
    requests = [r.predict_log.request for r in records]
    assert [r.model_spec.signature_name for r in requests] == ["serving_default", "explain", "explain_image"]
    assert {r.model_spec.name for r in requests} == {"psyattr_gender"}
    assert [d.size for d in requests[1].inputs["image"].tensor_shape.dim] == [1, 227, 227, 3]
    photo = tf.make_ndarray(requests[2].inputs["photo"])
    assert photo.shape == (1,) and Image.open(io.BytesIO(photo[0])).size == (256, 256)
    meta = json.loads((paths["psyattr_gender"] / "assets.extra" / "psyattr.json").read_text())
    assert meta["outputs"] == ["male", "female"] and meta["composite"] == "alpha2beta1"


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_tf_serving_loaders_give_in_process_keras_numbers(exports, expected, images, loader):
    _, paths = exports
    for name, path in paths.items():
        bundle = LOADERS[loader](path)
        try:
            predictions = expected[name]["serving_default"]
            assert_predictions_close(bundle.run("serving_default", {"image": images}), predictions)
            for signature in ("explain", "explain_xla"):  # XLA may compile in this process
                targets, scores, heatmaps = expected[name][signature]
                out = bundle.run(signature, {"image": images, "target": TARGETS})
                assert [t.decode() for t in out.pop("target")] == targets
                np.testing.assert_allclose(out.pop("target_score"), scores, rtol=1e-5)
                assert_heatmaps_close(out.pop("heatmap"), heatmaps)
                assert_predictions_close(out, predictions)
        finally:
            bundle.close()


def test_with_xla_disabled_as_in_tf_serving_explain_xla_fails_cleanly_and_the_rest_works(exports, expected, images,
                                                                                         tmp_path):
    _, paths = exports
    np.savez(tmp_path / "inputs.npz", image=images, target=TARGETS, photo=framed_pngs(images),
             request=np.array([b"", b"x"], dtype=object))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-m", "tests.tf_serving_loaders", str(tmp_path / "inputs.npz"),
                             str(tmp_path / "out"), *map(str, paths.values()), "--disable-xla"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in paths:
        out = tmp_path / "out" / name
        errors = json.loads((out / "errors.json").read_text())
        assert set(errors) == {"v1.explain_xla", "c_api.explain_xla"}
        assert all("XLA compilation disabled" in message for message in errors.values())
        targets, scores, heatmaps = expected[name]["explain"]
        for loader in LOADERS:
            with np.load(out / f"{loader}.serving_default.npz") as data:
                assert_predictions_close(dict(data), expected[name]["serving_default"])
            with np.load(out / f"{loader}.predict_image.npz") as data:
                assert_predictions_close(dict(data), expected[name]["serving_default"])
            for signature in ("explain", "explain_image"):  # photos framed already give the numbers of the pixels
                with np.load(out / f"{loader}.{signature}.npz", allow_pickle=True) as data:
                    assert [t.decode() for t in data["target"]] == targets
                    assert_heatmaps_close(data["heatmap"], heatmaps)
                    np.testing.assert_allclose(data["target_score"], scores, rtol=1e-5)
            with np.load(out / f"{loader}.metadata.npz", allow_pickle=True) as data:
                records = [json.loads(value) for value in data["psyattr_json"]]
            recorded = json.loads((paths[name] / "assets.extra" / "psyattr.json").read_text())
            assert records == [recorded, recorded] and recorded["framing"]["name"] == "utkface"


def test_a_stock_server_refuses_nan_pixels_and_unknown_targets_inside_the_graph(exports, images):
    _, paths = exports
    bundle = LOADERS["v1"](paths["psyattr_regressor"])
    try:
        bad = images[:2].copy()
        bad[1, 5, 5, 0] = np.nan
        with pytest.raises(tf.errors.InvalidArgumentError, match="image contains NaN or infinite pixel values"):
            bundle.run("serving_default", {"image": bad})
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"unknown target.*happy, attractive.*sad"):
            bundle.run("explain", {"image": images[:2], "target": np.array([b"happy", b"sad"], dtype=object)})
        with pytest.raises(tf.errors.InvalidArgumentError, match="same number of images"):
            bundle.run("explain", {"image": images[:2], "target": np.array([b"happy"], dtype=object)})
    finally:
        bundle.close()


def test_versions_are_never_overwritten_and_a_failed_export_leaves_nothing(exports, models, monkeypatch):
    root, paths = exports
    before = (paths["psyattr_gender"] / "saved_model.pb").read_bytes()
    with pytest.raises(FileExistsError, match=r"1 already exists: versions are never overwritten.*next free: 2"):
        export_model(models["psyattr_gender"], root, "psyattr_gender", version=1)
    assert (paths["psyattr_gender"] / "saved_model.pb").read_bytes() == before

    def broken_warmup(*args):
        raise OSError("disk full")

    monkeypatch.setattr(psyattr.export, "_write_warmup", broken_warmup)
    with pytest.raises(OSError, match="disk full"):
        export_model(models["psyattr_gender"], root, "psyattr_gender")
    assert sorted(p.name for p in (root / "psyattr_gender").iterdir()) == ["1"]


def test_export_refuses_bad_names_and_versions(models, tmp_path):
    with pytest.raises(ExportError, match="model name 'bad/name'"):
        export_model(models["psyattr_gender"], tmp_path, "bad/name")
    with pytest.raises(ExportError, match=r"version must be a whole number from 1 to 9223372036854775807"):
        export_model(models["psyattr_gender"], tmp_path, "ok", version=0)
    with pytest.raises(ExportError, match=r"from 1 to 9223372036854775807 \(TF Serving's int64 versions\), got 9{20}"):
        export_model(models["psyattr_gender"], tmp_path, "ok", version=99999999999999999999)
    assert not any(tmp_path.iterdir())


def test_export_command_takes_a_run_folder_and_adds_the_next_version(exports, models, tmp_path):
    root = tmp_path / "saved_models"
    shutil.copytree(exports[1]["psyattr_gender"], root / "psyattr_gender" / "1")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    models["psyattr_gender"].save(run_dir / "model.keras")
    result = CliRunner().invoke(cli, ["export", str(run_dir), "--name", "psyattr_gender", "--out", str(root),
                                      "--composite", "epsilon"])
    assert result.exit_code == 0, result.output
    assert f"exported psyattr_gender version 2 to {root / 'psyattr_gender' / '2'}" in result.output
    assert list_versions(root / "psyattr_gender") == [1, 2]
    meta = json.loads((root / "psyattr_gender" / "2" / "assets.extra" / "psyattr.json").read_text())
    assert meta["composite"] == "epsilon" and meta["source"] == str(run_dir)
    result = CliRunner().invoke(cli, ["export", str(run_dir), "--name", "psyattr_gender", "--out", str(root),
                                      "--version", "2"])
    assert result.exit_code != 0 and "already exists" in result.output
    result = CliRunner().invoke(cli, ["export", str(run_dir), "--name", "psyattr_gender", "--out", str(root),
                                      "--version", "99999999999999999999"])
    assert result.exit_code != 0 and "99999999999999999999 is not in the range 1<=x<=9223372036854775807" in result.output
    assert list_versions(root / "psyattr_gender") == [1, 2]
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "nothing"), "--name", "x", "--out", str(root)])
    assert result.exit_code != 0 and "cannot load model" in result.output


def test_predict_command_without_a_server_gives_the_serving_outputs_in_process(models, omi_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    models["psyattr_gender"].save(run_dir / "model.keras")
    image = omi_dir / "images_256" / "1.jpg"
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    result = CliRunner().invoke(cli, ["predict", "--model", str(run_dir), "--out", str(tmp_path / "scores.json"),
                                      str(image), str(tmp_path / "broken.jpg")])
    assert result.exit_code == 0, result.output
    assert "scored 1 image(s)" in result.output and "skipped" in result.output
    record, failed = json.loads((tmp_path / "scores.json").read_text())
    assert failed["image"] == str(tmp_path / "broken.jpg") and "cannot decode" in failed["error"]
    # The photo is framed as the model records (utkface) before it is scored.
    framed = framed_inputs([image], recorded_framing(models["psyattr_gender"]))
    expected = expected_predictions(models["psyattr_gender"], framed)
    assert record["image"] == str(image) and record["framing"] == "utkface"
    assert record["outputs"] == pytest.approx({k: float(v[0]) for k, v in expected.items()}, rel=1e-5, abs=1e-6)
    result = CliRunner().invoke(cli, ["predict", "--model", str(run_dir), str(tmp_path / "missing.jpg")])
    assert result.exit_code != 0 and "no such image or folder" in result.output


def test_an_export_cleans_up_staging_folders_of_killed_exports_but_never_a_live_one(models, tmp_path):
    model_dir = tmp_path / "psyattr_gender"
    stale, live = model_dir / ".1.partial-killed", model_dir / ".2.partial-running"
    for folder in (stale, live):
        folder.mkdir(parents=True)
        (folder / "saved_model.pb").write_bytes(b"half")
    two_hours_ago = time.time() - 7200
    for path in (stale / "saved_model.pb", stale):
        os.utime(path, (two_hours_ago, two_hours_ago))
    export_model(models["psyattr_gender"], tmp_path, "psyattr_gender")
    assert not stale.exists() and live.exists() and list_versions(model_dir) == [1]
