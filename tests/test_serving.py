"""The embedded server over real gRPC on loopback: stock TF Serving stubs, errors, batching, versions, client, CLI."""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from psyattr.cli import cli
from psyattr.data.images import load_model_input
from psyattr.export import export_model
from psyattr.lrp import LRPExplainer
from psyattr.serving import BatchingParameters, ExplainerClient, ModelServer, ServingError
from tests.serving_models import (EXPLAIN_EXTRA_KEYS, REGRESSOR_KEYS, assert_heatmaps_close, assert_predictions_close,
                                  expected_explanations, expected_predictions, framed_inputs, framed_pngs,
                                  random_regressor)
from tests.test_lrp_explainer import random_net

ROOT = Path(__file__).resolve().parents[1]
REGRESSOR = "psyattr_regressor"
MAX_BATCH = 24
MAX_MESSAGE = 16 << 20  # 27 images pass, 28 do not
CONFIG = """
model_config_list {
  config { name: "psyattr_regressor" base_path: "/models/psyattr_regressor" model_platform: "tensorflow"
           version_labels { key: "stable" value: 1 } }
  config { name: "psyattr_gender" base_path: "/models/psyattr_gender" model_platform: "tensorflow" }
  config { name: "psyattr_rollover" base_path: "/models/psyattr_rollover" model_platform: "tensorflow" }
}
"""


@pytest.fixture(scope="module")
def models(face_images):
    return {REGRESSOR: random_regressor(21, face_images), "psyattr_gender": random_net("gender", 22, False)}


@pytest.fixture(scope="module")
def serving_root(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("saved_models")
    for name, model in models.items():
        export_model(model, root, name)
    shutil.copytree(root / REGRESSOR / "1", root / "psyattr_rollover" / "1")
    (root / "models.config").write_text(CONFIG)
    return root


@pytest.fixture(scope="module")
def server(serving_root):
    batching = BatchingParameters(max_batch_size=MAX_BATCH, batch_timeout_micros=50_000, num_batch_threads=1)
    server = ModelServer(serving_root, serving_root / "models.config", batching, port=0, poll_seconds=0.2,
                         max_message_bytes=MAX_MESSAGE, xla_cpu_compilation_enabled=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.address)  # stock options: what any TF Serving client starts with
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def happy_explanations(models, face_images):
    return expected_explanations(models[REGRESSOR], face_images[:6], ["happy"] * 6)


def predict_request(images, model=REGRESSOR, signature="serving_default", **inputs) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(images))
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


def outputs_of(response) -> dict[str, np.ndarray]:
    return {key: tf.make_ndarray(proto) for key, proto in response.outputs.items()}


def test_without_xla_the_server_refuses_explain_xla_alone_and_leaves_xla_to_the_process(serving_root, models,
                                                                                       face_images):
    with ModelServer(serving_root, port=0, warmup=False) as server, \
            ExplainerClient(server.address, "psyattr_gender", timeout=120, retries=0) as client:
        with pytest.raises(ServingError, match="XLA compilation disabled.*--xla-cpu-compilation-enabled") as caught:
            client.explain(face_images[:1], xla=True)
        assert caught.value.code == grpc.StatusCode.INTERNAL
        served = client.explain(face_images[:1], "female")
    # The process itself still compiles with XLA: nothing was switched off process-wide.
    local = LRPExplainer(models["psyattr_gender"], jit_compile=True)(face_images[:1], "female")
    np.testing.assert_allclose(served.heatmap, local.heatmap, rtol=1e-3, atol=1e-3 * np.abs(local.heatmap).max())


def test_predict_with_the_stock_stub_gives_in_process_keras_scores(stub, models, face_images):
    for name, model in models.items():
        response = stub.Predict(predict_request(face_images[:3], name), timeout=60)
        assert (response.model_spec.name, response.model_spec.version.value) == (name, 1)
        assert response.model_spec.signature_name == "serving_default"
        assert_predictions_close(outputs_of(response), expected_predictions(model, face_images[:3]))
    # Typed fields, as TF Serving writes them, not tensor_content.
    assert len(response.outputs["prob_male"].float_val) == 3 and not response.outputs["prob_male"].tensor_content


def test_explain_with_the_stock_stub_gives_in_process_heatmaps(stub, models, face_images):
    targets = np.array([b"happy", b"", b"1"], dtype=object)
    response = stub.Predict(predict_request(face_images[:3], signature="explain", target=targets), timeout=120)
    outputs = outputs_of(response)
    assert set(outputs) == REGRESSOR_KEYS | EXPLAIN_EXTRA_KEYS
    names, scores, heatmaps = expected_explanations(models[REGRESSOR], face_images[:3], targets)
    assert [t.decode() for t in outputs.pop("target")] == names
    np.testing.assert_allclose(outputs.pop("target_score"), scores, rtol=1e-5)
    assert_heatmaps_close(outputs.pop("heatmap"), heatmaps)
    assert_predictions_close(outputs, expected_predictions(models[REGRESSOR], face_images[:3]))


def test_explain_xla_runs_on_a_server_with_xla_enabled(server, models, face_images):
    with ExplainerClient(server.address, "psyattr_gender", timeout=120) as client:
        result = client.explain(face_images[:2], ["female", 0], xla=True)
    names, scores, heatmaps = expected_explanations(models["psyattr_gender"], face_images[:2], ["female", "0"],
                                                    xla=True)
    assert result.target_names == names == ["female", "male"]
    np.testing.assert_allclose(result.scores, scores, rtol=1e-5)
    assert_heatmaps_close(result.heatmap, heatmaps)


def test_metadata_and_status_answer_like_tf_serving(server, stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = REGRESSOR
    response = stub.GetModelMetadata(request, timeout=10)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    assert {"serving_default", "explain", "explain_xla"} <= set(signatures.signature_def)
    assert set(signatures.signature_def["explain"].inputs) == {"image", "target"}
    assert response.model_spec.version.value == 1
    request.metadata_field[:] = ["nope"]
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetModelMetadata(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "Metadata field nope is not supported"

    channel = grpc.insecure_channel(server.address)
    models_stub = model_service_pb2_grpc.ModelServiceStub(channel)
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = REGRESSOR
    (status,) = models_stub.GetModelStatus(status_request, timeout=10).model_version_status
    assert (status.version, status.state, status.status.error_code) == (
        1, get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0)
    for name, version, code, message in (
            ("nope", None, grpc.StatusCode.NOT_FOUND, "Could not find any versions of model nope"),
            ("", None, grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified."),
            (REGRESSOR, 9, grpc.StatusCode.NOT_FOUND, f"Could not find version 9 of model {REGRESSOR}")):
        status_request.model_spec.name = name
        if version is not None:
            status_request.model_spec.version.value = version
        with pytest.raises(grpc.RpcError) as caught:
            models_stub.GetModelStatus(status_request, timeout=10)
        assert (caught.value.code(), caught.value.details()) == (code, message)
    channel.close()


def test_a_version_label_from_the_config_picks_its_version(stub, face_images):
    request = predict_request(face_images[:1])
    request.model_spec.version_label = "stable"
    assert stub.Predict(request, timeout=60).model_spec.version.value == 1


def _spec(**fields):
    def change(request, images):
        for key, value in fields.items():
            if key == "version":
                request.model_spec.version.value = value
            else:
                setattr(request.model_spec, key, value)
        return request
    return change


def _inputs(**arrays):
    def change(request, images):
        request.inputs.clear()
        for key, make in arrays.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(make(images)))
        return request
    return change


def _nan(images):
    bad = images[:2].copy()
    bad[1, 100, 100, 1] = np.nan
    return bad


def _no_spec(request, images):
    request.ClearField("model_spec")
    return request


def _filter(request, images):
    request.output_filter.append("nope")
    return request


def _explain(target):
    def change(request, images):
        request.model_spec.signature_name = "explain"
        request.inputs["target"].CopyFrom(tf.make_tensor_proto(np.array(target, dtype=object)))
        return request
    return change


INVALID = grpc.StatusCode.INVALID_ARGUMENT
BAD_REQUESTS = {
    "unknown model": (_spec(name="nope"), grpc.StatusCode.NOT_FOUND, r"^Servable not found for request: Latest\(nope\)$"),
    "unknown version": (_spec(version=7), grpc.StatusCode.NOT_FOUND,
                        rf"^Servable not found for request: Specific\({REGRESSOR}, 7\)$"),
    "unknown label": (_spec(version_label="nope"), INVALID, "^Unrecognized servable version label: nope$"),
    "empty model name": (_spec(name=""), INVALID, r"^ModelSpec has no name specified\.$"),
    "10 MB label": (_spec(version_label="x" * (10 << 20)), INVALID, r"^Unrecognized servable version label: x{64}\.\.\.$"),
    "10 MB target": (_explain([b"s" * (10 << 20)]), INVALID,
                     r"^unknown target 's{64}\.\.\.' \(10485760 characters\): the outputs .*\(image 0\)$"),
    "unknown signature": (_spec(signature_name="nope"), grpc.StatusCode.FAILED_PRECONDITION,
                          '^Serving signature key "nope" not found.$'),
    "missing model spec": (_no_spec, INVALID, "^Missing ModelSpec$"),
    "wrong input name": (_inputs(images=lambda x: x[:1]), INVALID,
                         r"^Signature input alias: image\(feed name: serving_default_image:0\) not found in request"),
    "missing input": (_spec(signature_name="explain"), INVALID,
                      r"^input size does not match signature: 1!=2 .* Missing but required: \{target\}\.$"),
    "wrong dtype": (_inputs(image=lambda x: x[:1].astype(np.float64)), INVALID,
                    "input 'image' must be DT_FLOAT, got DT_DOUBLE"),
    "wrong shape": (_inputs(image=lambda x: x[:1, :224, :224]), INVALID,
                    r"input 'image' must have shape \(N, 227, 227, 3\), got \(1, 224, 224, 3\)"),
    "wrong rank": (_inputs(image=lambda x: x[0]), INVALID,
                   r"input 'image' must have 4 dimensions \(N, 227, 227, 3\), got 3 .*add a batch axis"),
    "empty batch": (_inputs(image=lambda x: x[:0]), INVALID, "input 'image' is an empty batch"),
    "NaN pixels": (_inputs(image=_nan), INVALID, r"input 'image' contains NaN or infinite values \(rows 1\)"),
    "unknown target": (_explain([b"sad"]), INVALID,
                       r"unknown target 'sad': the outputs of the model are happy, attractive .*\(image 0\)$"),
    "Arabic-Indic digit target": (_explain(["\u0660".encode()]), INVALID, r"^unknown target '\u0660': the outputs"),
    "superscript digit target": (_explain(["\u00b2".encode()]), INVALID, r"^unknown target '\u00b2': the outputs"),
    "target count": (_explain([b"happy", b"happy"]), INVALID, "inputs must hold the same number of rows"),
    "unknown output": (_filter, INVALID, "^output tensor alias not found in signature: nope"),
    "too many images": (_inputs(image=lambda x: np.concatenate([x] * 3)[:MAX_BATCH + 1]), INVALID,
                        rf"Task size {MAX_BATCH + 1} is larger than maximum input batch size {MAX_BATCH}"),
    "oversized request": (_inputs(image=lambda x: np.concatenate([x] * 3)[:28]), grpc.StatusCode.RESOURCE_EXHAUSTED,
                          "larger than max"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_gets_its_status_and_the_server_keeps_serving(case, server, stub, face_images):
    change, code, pattern = BAD_REQUESTS[case]
    request = change(predict_request(face_images[:1]), face_images)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request, timeout=60)
    assert caught.value.code() == code
    assert re.search(pattern, caught.value.details()), caught.value.details()
    assert stub.Predict(predict_request(face_images[:1]), timeout=60).outputs["score_happy"].float_val
    assert server.core.status_counts["INTERNAL"] == 0


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server, stub, face_images, happy_explanations):
    barrier = threading.Barrier(6)

    def explain_one(i: int) -> np.ndarray:
        request = predict_request(face_images[i:i + 1], signature="explain", target=np.array([b"happy"], dtype=object))
        barrier.wait()
        return tf.make_ndarray(stub.Predict(request, timeout=120).outputs["heatmap"])[0]

    key = f"{REGRESSOR}/1/explain"
    before = server.manager.batch_sizes().get(key, Counter())
    with ThreadPoolExecutor(6) as pool:
        heatmaps = np.stack(list(pool.map(explain_one, range(6))))
    assert_heatmaps_close(heatmaps, happy_explanations[2])
    batches = server.manager.batch_sizes()[key] - before  # requests per batch -> batches
    assert sum(size * count for size, count in batches.items()) == 6 and max(batches) > 1, batches


def test_poisoned_requests_never_fail_or_leak_into_other_clients_batches(server, stub, face_images,
                                                                        happy_explanations):
    # Targets the graph would refuse, sent while good requests share the batching window with them.
    poisons = ["\u0660", "\u00b2", "\uff11", "1 ", "-1", "sad"]
    barrier = threading.Barrier(12)

    def send(i: int):
        target = poisons[i // 2] if i % 2 else "happy"
        request = predict_request(face_images[i // 2:i // 2 + 1], signature="explain",
                                  target=np.array([target.encode()], dtype=object))
        barrier.wait()
        try:
            return target, tf.make_ndarray(stub.Predict(request, timeout=120).outputs["heatmap"])[0]
        except grpc.RpcError as err:
            return target, err

    internal = server.core.status_counts["INTERNAL"]
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(send, range(12)))
    for i, (target, answer) in enumerate(answers):
        if i % 2 == 0:
            assert isinstance(answer, np.ndarray), answer
            assert_heatmaps_close(answer[None], happy_explanations[2][i // 2:i // 2 + 1])
        else:
            assert isinstance(answer, grpc.RpcError) and answer.code() == INVALID, (target, answer)
            # Each error quotes its own request's target, never another client's.
            assert answer.details().startswith(f"unknown target {target!r}: "), answer.details()
            assert not any(repr(other) in answer.details() for other in poisons if other != target)
    assert server.core.status_counts["INTERNAL"] == internal


def test_photos_in_give_the_numbers_of_their_pixels_and_a_photo_that_is_no_image_is_named(server, stub, face_images):
    photos = framed_pngs(face_images[:2])
    by_pixels = stub.Predict(predict_request(face_images[:2]), timeout=120).outputs
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = REGRESSOR, "predict_image"
    request.inputs["photo"].CopyFrom(tf.make_tensor_proto(photos))
    by_photo = stub.Predict(request, timeout=120).outputs
    for key in REGRESSOR_KEYS:
        np.testing.assert_allclose(tf.make_ndarray(by_photo[key]), tf.make_ndarray(by_pixels[key]), rtol=1e-5)
    request.inputs["photo"].CopyFrom(tf.make_tensor_proto(np.array([*photos, b"GIF89a, or so it says"], dtype=object)))
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request, timeout=120)
    assert caught.value.code() == INVALID
    assert caught.value.details().startswith("photo 2 is not a complete JPEG, PNG, GIF or BMP image")
    assert server.core.status_counts["INTERNAL"] == 0


def test_the_client_receives_heatmaps_beyond_grpcs_4_mib_default(server, face_images, happy_explanations):
    images = np.concatenate([face_images, face_images, face_images[:1]])  # 21 images in one request
    with ExplainerClient(server.address, REGRESSOR, timeout=300, batch_size=MAX_BATCH) as client:
        result = client.explain(images, "happy")
    assert result.heatmap.nbytes > 4 << 20 and result.target_names == ["happy"] * 21
    assert_heatmaps_close(result.heatmap[[0, 1, 2, 13, 14, 15]], happy_explanations[2][[0, 1, 2, 3, 4, 5]])


def test_the_client_splits_batches_and_retries_only_unavailable(server, serving_root, face_images,
                                                                 happy_explanations, tmp_path):
    counts = server.core.status_counts
    ok, invalid = counts["OK"], counts["INVALID_ARGUMENT"]
    with ExplainerClient(server.address, REGRESSOR, timeout=120, batch_size=2, retries=5) as client:
        result = client.explain(face_images[:3], "happy")
        assert counts["OK"] == ok + 2 + 2  # 2 + 1 images, and the export's signatures and psyattr.json once
        assert_heatmaps_close(result.heatmap, happy_explanations[2][:3])
        with pytest.raises(ServingError, match="unknown target 'sad'") as caught:
            client.explain(face_images[:1], "sad")
        # The client knows the outputs from the export's metadata: a bad target fails before any request.
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and counts["INVALID_ARGUMENT"] == invalid
        assert counts["OK"] == ok + 4

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with ExplainerClient(f"127.0.0.1:{port}", "psyattr_gender", timeout=10, retries=0) as client:
        with pytest.raises(ServingError) as caught:
            client.predict(face_images[:1])
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    # A server that comes up while the client backs off is reached by a retry.
    shutil.copytree(serving_root / "psyattr_gender", tmp_path / "late" / "psyattr_gender")
    late = ModelServer(tmp_path / "late", port=port, xla_cpu_compilation_enabled=True, warmup=False)
    starter = threading.Timer(1.0, late.start)
    starter.start()
    try:
        with ExplainerClient(f"127.0.0.1:{port}", "psyattr_gender", timeout=30, retries=8, backoff=0.2) as client:
            assert set(client.predict(face_images[:1])) == {"prob_male", "prob_female", "logit_male", "logit_female"}
    finally:
        starter.join()
        late.stop()


def wait_for(condition, what: str, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_new_versions_are_served_without_restart_and_broken_ones_are_skipped(server, serving_root, face_images,
                                                                            caplog):
    caplog.set_level(logging.INFO, logger="psyattr.serving")
    folder = serving_root / "psyattr_rollover"
    client = ExplainerClient(server.address, "psyattr_rollover", timeout=60)
    assert client.status() == [(1, "AVAILABLE")]
    new_model = random_regressor(31, face_images)
    export_model(new_model, serving_root, "psyattr_rollover")
    wait_for(lambda: client.status() == [(1, "END"), (2, "AVAILABLE")], "version 2 to replace version 1")
    expected = expected_predictions(new_model, face_images[:2])
    assert_predictions_close(client.predict(face_images[:2]), expected)

    (folder / "3").mkdir()
    (folder / "3" / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    half = folder / "4"  # a copy of version 2 that stopped half-way through the weights
    (half / "variables").mkdir(parents=True)
    shutil.copy(folder / "2" / "saved_model.pb", half)
    shutil.copy(folder / "2" / "variables" / "variables.index", half / "variables")
    data = (folder / "2" / "variables" / "variables.data-00000-of-00001").read_bytes()
    (half / "variables" / "variables.data-00000-of-00001").write_bytes(data[:len(data) // 2])
    states = wait_for(lambda: dict(client.status()) if {3, 4} <= set(dict(client.status())) else None,
                      "versions 3 and 4 to be tried")
    assert states == {1: "END", 2: "AVAILABLE", 3: "END", 4: "END"}
    for version in (3, 4):
        assert f"skipped psyattr_rollover version {version}" in caplog.text
    assert "version 2 keeps serving" in caplog.text
    assert_predictions_close(client.predict(face_images[:2]), expected)

    shutil.copytree(folder / "2", half, dirs_exist_ok=True)  # the copy completes: version 4 is tried again
    wait_for(lambda: dict(client.status()).get(4) == "AVAILABLE", "the completed version 4 to load")
    request = predict_request(face_images[:2], "psyattr_rollover")
    response = prediction_service_pb2_grpc.PredictionServiceStub(client.channel).Predict(request, timeout=60)
    assert response.model_spec.version.value == 4
    assert_predictions_close(outputs_of(response), expected)
    client.close()


def test_cli_predict_and_explain_ask_the_server(server, omi_dir, tmp_path):
    images = [omi_dir / "images_256" / name for name in ("1.jpg", "2.jpg")]
    with ExplainerClient(server.address, REGRESSOR, timeout=120) as client:
        # The CLI frames each photo as the export records, then asks the server: the client's answer on those frames.
        arrays = framed_inputs(images, client.framing)
        direct = client.predict(arrays)
        explained = client.explain(arrays[:1], "happy")
        as_given = client.predict(np.stack([load_model_input(p) for p in images]))
    for framing, expected in ((None, direct), ("none", as_given)):
        result = CliRunner().invoke(cli, ["predict", "--server", server.address, "--model", REGRESSOR,
                                          *(["--framing", framing] if framing else []), *map(str, images)])
        assert result.exit_code == 0, result.output
        records = [json.loads(line) for line in result.output.splitlines()]
        assert [r["image"] for r in records] == list(map(str, images))
        for i, record in enumerate(records):
            assert record["outputs"] == pytest.approx({k: float(v[i]) for k, v in expected.items()}, rel=1e-6)

    out = tmp_path / "heatmaps"
    result = CliRunner().invoke(cli, ["explain", "--server", server.address, "--model", REGRESSOR, "--target", "happy",
                                      "--no-progress", "--out", str(out), str(images[0])])
    assert result.exit_code == 0, result.output
    assert f"explained 1 image(s) with {REGRESSOR} at {server.address}" in result.output
    record = json.loads((out / "1.json").read_text())
    assert record["target"] == "happy" and record["score"] == pytest.approx(float(explained.scores[0]), rel=1e-6)
    assert_heatmaps_close(np.load(out / "1.heatmap.npy")[None], explained.heatmap)
    assert (out / "1.png").exists()

    result = CliRunner().invoke(cli, ["explain", "--server", server.address, "--model", REGRESSOR, "--composite",
                                      "epsilon", "--out", str(out), str(images[0])])
    assert result.exit_code != 0 and "--composite applies to local explanations" in result.output
    result = CliRunner().invoke(cli, ["predict", "--server", server.address, "--model", "nope", str(images[0])])
    assert result.exit_code != 0 and "Servable not found for request: Latest(nope)" in result.output


def test_serve_command_disables_xla_like_tf_serving_and_stops_gracefully(serving_root, face_images, tmp_path):
    shutil.copytree(serving_root / "psyattr_gender", tmp_path / "models" / "psyattr_gender")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    # Batches of 32, so that one request is long enough to be signalled while it runs (below).
    (tmp_path / "batching.txt").write_text("max_batch_size { value: 32 }\nbatch_timeout_micros { value: 2000 }\n")
    with open(tmp_path / "stderr.txt", "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "psyattr", "serve", "--models", str(tmp_path / "models"),
                                    "--port", "0", "--no-rest", "--batching-parameters", str(tmp_path / "batching.txt")],
                                   cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    try:
        first = lines.get(timeout=180)
        match = re.match(r"serving psyattr_gender on (127\.0\.0\.1:\d+) ", first)
        assert match, first + (tmp_path / "stderr.txt").read_text()[-2000:]
        client = ExplainerClient(match.group(1), "psyattr_gender", timeout=120, retries=0)
        assert client.predict(face_images[:1])["prob_male"].shape == (1,)
        with pytest.raises(ServingError, match="XLA compilation disabled") as caught:
            client.explain(face_images[:1], xla=True)
        assert caught.value.code == grpc.StatusCode.INTERNAL

        # SIGTERM while an explain is running: it is still answered. 32 images in one request take about 1.5 s
        # to explain here, so the signal lands after the request has arrived and before it is answered.
        client.batch_size = 32
        with ThreadPoolExecutor(1) as pool:
            images = np.concatenate([face_images] * 3 + [face_images[:2]])
            running = pool.submit(lambda: (client.explain(images, "female"), time.monotonic()))
            time.sleep(0.6)
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            result, answered = running.result(timeout=120)
        assert result.heatmap.shape == (32, 227, 227) and answered > signalled
        assert process.wait(timeout=120) == 0
        assert lines.get(timeout=10).strip() == "stopped"
        client.close()
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.slow
def test_an_unaligned_photo_scores_the_same_through_predict_explain_a_study_and_the_server(omi_dir, tmp_path):
    """Every path frames a photo as the model records (utkface, in the `.keras` file and the export)."""
    import csv

    from PIL import Image

    from psyattr.data.rated import read_rated
    from psyattr.faces.framing import UTKFACE
    from psyattr.studies.heatmaps import heatmap_study
    from psyattr.studies.inputs import StudyInputs
    from tests.test_lrp_explainer import spread_head

    photos = []
    for k in range(4):  # tilted, off centre, on a larger canvas: nothing like either framing
        face = Image.open(omi_dir / "images_256" / f"{k + 1}.jpg").convert("RGB")
        face = face.rotate(8 * (k - 1.5), expand=True, fillcolor=(90, 90, 90))
        canvas = Image.new("RGB", (420, 380), (120, 110, 100))
        canvas.paste(face, (30 + 25 * k, 50 + 12 * k))
        photos.append(tmp_path / f"unaligned_{k}.jpg")
        canvas.save(photos[-1], quality=95)
    model = random_regressor(31, framed_inputs(photos, UTKFACE.to_json()))
    spread_head(model, framed_inputs(photos, UTKFACE.to_json()), 0.2, centre=[0.5, 0.5], seed=31)  # no clipped scores
    model_file = tmp_path / "regressor.keras"
    model.save(model_file)
    export_model(model_file, tmp_path / "models", "unaligned")
    # XLA stays on: disabling it for the whole test process could not be undone.
    server = ModelServer(tmp_path / "models", port=0, poll_seconds=0.2, xla_cpu_compilation_enabled=True).start()
    try:
        result = CliRunner().invoke(cli, ["predict", "--server", server.address, "--model", "unaligned",
                                          *map(str, photos)])
    finally:
        server.stop()
    assert result.exit_code == 0, result.output
    served = {json.loads(line)["image"]: json.loads(line)["outputs"] for line in result.output.splitlines()}

    result = CliRunner().invoke(cli, ["predict", "--model", str(model_file), "--out", str(tmp_path / "local.csv"),
                                      *map(str, photos)])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "local.csv", newline="") as handle:
        local = {row["image"]: row for row in csv.DictReader(handle)}
    assert all(row["framing"] == "utkface" and not row["error"] for row in local.values())
    scores = [float(row["score_happy"]) for row in local.values()]
    assert 0 < min(scores) and max(scores) < 1 and np.ptp(scores) > 0.05, scores

    out = tmp_path / "explained"
    result = CliRunner().invoke(cli, ["explain", "--model", str(model_file), "--target", "happy", "--no-progress",
                                      "--out", str(out), *map(str, photos)])
    assert result.exit_code == 0, result.output
    # A record's `score` is the explained pre-activation; its `outputs` are the model's (clipped) scores.
    explained = {json.loads(f.read_text())["image"]: json.loads(f.read_text())["outputs"] for f in out.glob("*.json")}

    ratings = tmp_path / "ratings.csv"
    ratings.write_text("image,happy\n" + "".join(f"{p},{3 + k}\n" for k, p in enumerate(photos)))
    data = read_rated("csv", ratings, (1.0, 9.0))
    study = heatmap_study(StudyInputs.load([model_file], data, seed=0), tmp_path / "study", attribute="happy")
    studied = next(iter(study.attributes["happy"].models.values())).ratings
    assert len(study.ids) == 2  # the seeded test half of the four

    for photo in map(str, photos):
        score, rating = float(local[photo]["score_happy"]), float(local[photo]["rating_happy"])
        assert served[photo]["score_happy"] == pytest.approx(score, rel=1e-5)
        assert served[photo]["rating_happy"] == pytest.approx(rating, rel=1e-5)
        assert explained[photo]["happy"] == pytest.approx(score, rel=1e-4)  # XLA-compiled explain vs Keras
    for face_id, rating in zip(study.ids, studied):
        photo = str(data.paths[data.ids.index(face_id)])
        assert rating == pytest.approx(float(local[photo]["rating_happy"]), rel=1e-5)
    # Framed otherwise, the same photos score differently: the agreement above is the framing's doing.
    result = CliRunner().invoke(cli, ["predict", "--model", str(model_file), "--framing", "none", "--out",
                                      str(tmp_path / "none.csv"), *map(str, photos)])
    with open(tmp_path / "none.csv", newline="") as handle:
        unframed = {row["image"]: float(row["score_happy"]) for row in csv.DictReader(handle)}
    assert max(abs(unframed[p] - float(local[p]["score_happy"])) for p in local) > 1e-3
