"""TF Serving's REST API of the embedded server over real HTTP on loopback: formats, numbers, errors, limits, clients."""

from __future__ import annotations

import base64
import http.client
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from click.testing import CliRunner

from psyattr.cli import cli
from psyattr.export import export_model
from psyattr.serving import BatchingParameters, ExplainerClient, ModelServer, ServingError
from tests.serving_models import (EXPLAIN_EXTRA_KEYS, GENDER_KEYS, REGRESSOR_KEYS, assert_heatmaps_close,
                                  assert_predictions_close, expected_explanations, expected_predictions,
                                  framed_inputs, framed_pngs, random_regressor)
from tests.test_lrp_explainer import random_net

REGRESSOR, GENDER = "psyattr_regressor", "psyattr_gender"
MAX_BATCH = 8
MAX_BODY = 32 << 20
CONFIG = """
model_config_list {
  config { name: "psyattr_regressor" base_path: "/models/psyattr_regressor" model_platform: "tensorflow"
           version_labels { key: "stable" value: 1 } }
  config { name: "psyattr_gender" base_path: "/models/psyattr_gender" model_platform: "tensorflow" }
}
"""


@pytest.fixture(scope="module")
def models(face_images):
    return {REGRESSOR: random_regressor(41, face_images), GENDER: random_net("gender", 42, False)}


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("saved_models")
    for name, model in models.items():
        export_model(model, root, name)
    (root / "models.config").write_text(CONFIG)
    batching = BatchingParameters(max_batch_size=MAX_BATCH, batch_timeout_micros=100_000, num_batch_threads=1)
    server = ModelServer(root, root / "models.config", batching, port=0, rest_port=0, rest_max_body_bytes=MAX_BODY,
                         xla_cpu_compilation_enabled=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def grpc_client(server):
    with ExplainerClient(server.address, REGRESSOR, timeout=120) as client:
        yield client


def call(server, method: str, path: str, body=None, headers=None) -> tuple[int, dict, dict]:
    """What curl would get: the HTTP status, the headers and the JSON answer."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.rest_address + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def b64(text: str) -> dict:
    return {"b64": base64.b64encode(text.encode()).decode()}


def columns(outputs: dict) -> dict[str, np.ndarray]:
    return {key: np.array(value) for key, value in outputs.items() if key != "target"}


def test_predict_in_both_formats_gives_the_grpc_numbers(server, grpc_client, models, face_images):
    images = face_images[:3]
    expected = grpc_client.predict(images)
    assert_predictions_close(expected, expected_predictions(models[REGRESSOR], images))

    status, headers, row = call(server, "POST", f"/v1/models/{REGRESSOR}:predict", {"instances": images.tolist()})
    assert (status, headers["Content-Type"].split(";")[0], headers["X-Grpc-Code"]) == (200, "application/json", "OK")
    assert list(row) == ["predictions"] and len(row["predictions"]) == 3
    assert all(set(p) == REGRESSOR_KEYS for p in row["predictions"])  # several outputs: one object per image
    assert_predictions_close({k: np.array([p[k] for p in row["predictions"]]) for k in REGRESSOR_KEYS}, expected)

    body = {"signature_name": "serving_default", "inputs": images.tolist()}
    status, _, columnar = call(server, "POST", f"/v1/models/{REGRESSOR}/versions/1:predict", body)
    assert status == 200 and list(columnar) == ["outputs"] and set(columnar["outputs"]) == REGRESSOR_KEYS
    assert_predictions_close(columns(columnar["outputs"]), expected)

    status, _, labelled = call(server, "POST", f"/v1/models/{REGRESSOR}/labels/stable:predict",
                               {"instances": [{"image": image} for image in images.tolist()]})
    assert status == 200
    assert_predictions_close({k: np.array([p[k] for p in labelled["predictions"]]) for k in REGRESSOR_KEYS}, expected)


def test_explain_heatmaps_over_rest_equal_grpcs(server, grpc_client, models, face_images):
    images = face_images[3:6]
    grpc_result = grpc_client.explain(images, ["happy", "", "1"])
    names, scores, heatmaps = expected_explanations(models[REGRESSOR], images, ["happy", "", "1"])
    assert grpc_result.target_names == names

    instances = [{"image": image, "target": target}
                 for image, target in zip(images.tolist(), ["happy", b64(""), b64("1")])]  # b64 for DT_STRING too
    status, _, row = call(server, "POST", f"/v1/models/{REGRESSOR}:predict",
                          {"signature_name": "explain", "instances": instances})
    assert status == 200 and set(row["predictions"][0]) == REGRESSOR_KEYS | EXPLAIN_EXTRA_KEYS
    assert [p["target"] for p in row["predictions"]] == names  # a DT_STRING output comes back as a plain string
    row_heatmaps = np.array([p["heatmap"] for p in row["predictions"]], dtype=np.float32)
    assert row_heatmaps.shape == (3, 227, 227)
    assert_heatmaps_close(row_heatmaps, grpc_result.heatmap)
    assert_heatmaps_close(row_heatmaps, heatmaps)

    body = {"signature_name": "explain", "inputs": {"image": images.tolist(), "target": ["happy", "", "1"]}}
    status, _, columnar = call(server, "POST", f"/v1/models/{REGRESSOR}:predict", body)
    outputs = columnar["outputs"]
    assert status == 200 and outputs["target"] == names
    np.testing.assert_allclose(outputs["target_score"], scores, rtol=1e-5)
    assert_heatmaps_close(np.array(outputs["heatmap"], dtype=np.float32), grpc_result.heatmap)
    assert_predictions_close({k: np.array(outputs[k]) for k in REGRESSOR_KEYS}, grpc_result.outputs)

    # Photos in: the framed faces as PNG files, {"b64": ...} per photo, give the numbers of their pixels.
    photos = [{"b64": base64.b64encode(p).decode()} for p in framed_pngs(images)]
    body = {"signature_name": "explain_image", "inputs": {"photo": photos, "target": ["happy", "", "1"]}}
    status, _, by_photo = call(server, "POST", f"/v1/models/{REGRESSOR}:predict", body)
    assert status == 200 and by_photo["outputs"]["target"] == names
    np.testing.assert_allclose(by_photo["outputs"]["target_score"], scores, rtol=1e-5)
    assert_heatmaps_close(np.array(by_photo["outputs"]["heatmap"], dtype=np.float32), grpc_result.heatmap)


def test_status_and_metadata_answer_as_tf_serving_renders_them(server, grpc_client):
    expected = {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    for path in (f"/v1/models/{REGRESSOR}", f"/v1/models/{REGRESSOR}/versions/1", f"/v1/models/{REGRESSOR}/labels/stable"):
        assert call(server, "GET", path)[::2] == (200, expected), path

    status, _, metadata = call(server, "GET", f"/v1/models/{REGRESSOR}/metadata")
    assert status == 200 and set(metadata) == {"model_spec", "metadata"}
    assert metadata["model_spec"] == {"name": REGRESSOR, "version": "1", "signature_name": ""}
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "explain", "explain_xla"} <= set(signatures)
    image = signatures["explain"]["inputs"]["image"]
    assert image["dtype"] == "DT_FLOAT" and image["tensor_shape"] == {
        "dim": [{"size": s, "name": ""} for s in ("-1", "227", "227", "3")], "unknown_rank": False}
    assert signatures["explain"]["inputs"]["target"]["dtype"] == "DT_STRING"
    assert signatures["explain"]["method_name"] == "tensorflow/serving/predict"
    assert set(signatures["serving_default"]["outputs"]) == REGRESSOR_KEYS
    # The REST client reads the same SignatureDefs back.
    with ExplainerClient(server.rest_address, REGRESSOR) as client:
        assert client.metadata() == grpc_client.metadata()
        assert client.status() == grpc_client.status() == [(1, "AVAILABLE")]
    assert call(server, "GET", f"/v1/models/{REGRESSOR}/versions/1/metadata")[2] == metadata


def _image(images) -> list:
    return images[:1].tolist()


def _ragged(images) -> list:
    value = images[:1].tolist()
    value[0][5] = value[0][5][:-1]
    return value


def _nan(images) -> list:
    value = images[:1].copy()
    value[0, 5, 5, 1] = np.nan
    return value.tolist()  # json.dumps writes it as the NaN token


def _big(text_bytes: int) -> str:
    return "x" * text_bytes


PREDICT = f"/v1/models/{REGRESSOR}:predict"
# case -> (method, path, body from the images, HTTP status, gRPC code, pattern of the error)
BAD_REQUESTS = {
    "photo that is no image": ("POST", PREDICT, lambda x: {"signature_name": "predict_image", "inputs": {"photo": [
        {"b64": base64.b64encode(b"not a photo").decode()}]}}, 400, "INVALID_ARGUMENT",
        r"^photo 0 is not a complete JPEG, PNG, GIF or BMP image"),
    "malformed JSON": ("POST", PREDICT, lambda x: b'{"instances": [1, 2', 400, "INVALID_ARGUMENT",
                       r"^JSON Parse error: .* at offset: \d+$"),
    "empty body": ("POST", PREDICT, lambda x: b"", 400, "INVALID_ARGUMENT", r"^JSON Parse error: The document is empty$"),
    "not an object": ("POST", PREDICT, lambda x: b"[1, 2]", 400, "INVALID_ARGUMENT", r"^JSON Value: \[1, 2\] Is not object$"),
    "not UTF-8": ("POST", PREDICT, lambda x: b'{"instances": ["\xff"]}', 400, "INVALID_ARGUMENT", "^JSON Parse error: "),
    "instances and inputs": ("POST", PREDICT, lambda x: {"instances": _image(x), "inputs": _image(x)}, 400,
                             "INVALID_ARGUMENT", r"^JSON Value: \{\"instances\": \[\[\[\[.{20,}\.\.\. Not formatted "
                             r"correctly expecting only one of 'inputs' or 'instances' keys to exist $"),
    "neither": ("POST", PREDICT, lambda x: {"images": 1}, 400, "INVALID_ARGUMENT", r"^Missing 'inputs' or 'instances' key$"),
    "empty instances": ("POST", PREDICT, lambda x: {"instances": []}, 400, "INVALID_ARGUMENT",
                        r"No values in 'instances' array$"),
    "ragged list": ("POST", PREDICT, lambda x: {"inputs": _ragged(x)}, 400, "INVALID_ARGUMENT",
                    r"^Encountered list at unexpected size: 226 at level: 2 expected size: 227$"),
    "ragged instances": ("POST", PREDICT, lambda x: {"instances": [x[0].tolist(), x[1, :200].tolist()]}, 400,
                         "INVALID_ARGUMENT", r"^Failed to process element: 1 of 'instances' list\. Error: "
                         r"INVALID_ARGUMENT: Expecting tensor size: 154587 but got: 136200$"),
    "NaN as a string": ("POST", PREDICT, lambda x: {"instances": [[[["NaN", 1.0, 2.0]]]]}, 400, "INVALID_ARGUMENT",
                        r"^Failed to process element: 0 of 'instances' list\. Error: INVALID_ARGUMENT: "
                        r"JSON Value: \"NaN\" Type: String is not of expected type: float$"),
    "NaN token": ("POST", PREDICT, lambda x: {"inputs": _nan(x)}, 400, "INVALID_ARGUMENT",  # read, then refused
                  r"^input 'image' contains NaN or infinite values \(rows 0\)$"),
    "a boolean pixel": ("POST", PREDICT, lambda x: {"inputs": [[[[True, 1.0, 2.0]]]]}, 400, "INVALID_ARGUMENT",
                        r"^JSON Value: true Type: True is not of expected type: float$"),
    "unknown signature": ("POST", PREDICT, lambda x: {"signature_name": "nope", "inputs": _image(x)}, 400,
                          "INVALID_ARGUMENT", r'^Serving signature name: "nope" not found in signature def$'),
    "signature name not a string": ("POST", PREDICT, lambda x: {"signature_name": 7, "inputs": 1}, 400,
                                    "INVALID_ARGUMENT", r"'signature_name' key must be a string value\.$"),
    "b64 not base64": ("POST", PREDICT, lambda x: {"signature_name": "explain", "inputs": {
        "image": _image(x), "target": [{"b64": "%%% not base64 %%%"}]}}, 400, "INVALID_ARGUMENT",
        r'^Unable to base64 decode: \{"b64": "%%% not base64 %%%"\}$'),
    "target not a string": ("POST", PREDICT, lambda x: {"signature_name": "explain", "instances": [
        {"image": x[0].tolist(), "target": 1}]}, 400, "INVALID_ARGUMENT",
        r"^Failed to process element: 0 key: target of 'instances' list\. Error: INVALID_ARGUMENT: JSON Value: 1 "
        r"Type: Number is not of expected type: string$"),
    "missing input": ("POST", PREDICT, lambda x: {"signature_name": "explain", "inputs": {"image": _image(x)}}, 400,
                      "INVALID_ARGUMENT", r"^Missing named input: target in 'inputs' object\.$"),
    "unknown target": ("POST", PREDICT, lambda x: {"signature_name": "explain", "inputs": {
        "image": _image(x), "target": ["sad"]}}, 400, "INVALID_ARGUMENT",
        r"^unknown target 'sad': the outputs of the model are happy, attractive .*\(image 0\)$"),
    "10 MB target": ("POST", PREDICT, lambda x: {"signature_name": "explain", "inputs": {
        "image": _image(x), "target": [_big(10 << 20)]}}, 400, "INVALID_ARGUMENT",
        r"^unknown target 'x{64}\.\.\.' \(10485760 characters\): "),
    "wrong shape": ("POST", PREDICT, lambda x: {"inputs": x[:1, :100].tolist()}, 400, "INVALID_ARGUMENT",
                    r"input 'image' must have shape \(N, 227, 227, 3\), got \(1, 100, 227, 3\)"),
    "too many images": ("POST", PREDICT, lambda x: {"inputs": x[:MAX_BATCH + 1].tolist()}, 400, "INVALID_ARGUMENT",
                        rf"^Task size {MAX_BATCH + 1} is larger than maximum input batch size {MAX_BATCH}"),
    "unknown model": ("POST", "/v1/models/nope:predict", lambda x: {"inputs": 1}, 404, "NOT_FOUND",
                      r"^Servable not found for request: Latest\(nope\)$"),
    "unknown version": ("POST", f"/v1/models/{REGRESSOR}/versions/7:predict", lambda x: {"inputs": 1}, 404, "NOT_FOUND",
                        rf"^Servable not found for request: Specific\({REGRESSOR}, 7\)$"),
    "huge version": ("POST", f"/v1/models/{REGRESSOR}/versions/{10 ** 30}:predict", lambda x: {"inputs": 1}, 400,
                     "INVALID_ARGUMENT", r"^Failed to convert version: 1000000000000000000000000000000 to numeric\.$"),
    "unknown label": ("POST", f"/v1/models/{REGRESSOR}/labels/nope:predict", lambda x: {"inputs": 1}, 400,
                      "INVALID_ARGUMENT", r"^Unrecognized servable version label: nope$"),
    "status of an unknown model": ("GET", "/v1/models/nope", None, 404, "NOT_FOUND",
                                   r"^Could not find any versions of model nope$"),
    "status of an unknown version": ("GET", f"/v1/models/{REGRESSOR}/versions/9", None, 404, "NOT_FOUND",
                                     rf"^Could not find version 9 of model {REGRESSOR}$"),
    "status of an unknown label": ("GET", f"/v1/models/{REGRESSOR}/labels/nope", None, 400, "INVALID_ARGUMENT",
                                   r"^Unrecognized servable version label: nope$"),
    "metadata of an unknown model": ("GET", "/v1/models/nope/metadata", None, 404, "NOT_FOUND",
                                     r"^Servable not found for request: Latest\(nope\)$"),
    "no model name": ("GET", "/v1/models", None, 400, "INVALID_ARGUMENT", r"^Missing model name in request\.$"),
    "GET on predict": ("GET", PREDICT, None, 400, "INVALID_ARGUMENT", rf"^Malformed request: GET {PREDICT}$"),
    "PUT on status": ("PUT", f"/v1/models/{REGRESSOR}", lambda x: {}, 400, "INVALID_ARGUMENT",
                      rf"^Malformed request: PUT /v1/models/{REGRESSOR}$"),
    "DELETE": ("DELETE", f"/v1/models/{REGRESSOR}", None, 400, "INVALID_ARGUMENT", "^Malformed request: DELETE "),
    "classify": ("POST", f"/v1/models/{REGRESSOR}:classify", lambda x: {"examples": []}, 501, "UNIMPLEMENTED",
                 r"^classify is not served here"),
    "outside the API": ("GET", "/favicon.ico", None, 404, "NOT_FOUND", r"^Not found: /favicon\.ico"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_gets_tf_servings_status_and_the_server_keeps_serving(case, server, face_images):
    method, path, make_body, status, code, pattern = BAD_REQUESTS[case]
    got, headers, answer = call(server, method, path, make_body(face_images) if make_body else None)
    assert (got, headers["X-Grpc-Code"], list(answer)) == (status, code, ["error"]), answer
    assert re.search(pattern, answer["error"]), answer["error"]
    assert len(answer["error"]) < 400  # user input is echoed as a short prefix only
    assert call(server, "GET", f"/v1/models/{REGRESSOR}")[0] == 200
    assert call(server, "POST", PREDICT, {"inputs": _image(face_images)})[0] == 200
    assert server.core.status_counts["INTERNAL"] == 0


def _read_answer(sock: socket.socket) -> tuple[int, dict]:
    sock.settimeout(60)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", head, re.IGNORECASE).group(1))
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(head.split()[1]), json.loads(rest[:length])


@pytest.mark.slow
def test_a_200_mb_body_is_refused_by_the_size_limit_before_it_is_read(server, face_images):
    host, port = "127.0.0.1", server.rest_port
    limit_text = rf"limit of {MAX_BODY} bytes \(32 MiB\).*--rest-max-body-mb"
    head = f"POST {PREDICT} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    chunk = b" " * (1 << 20)

    # Content-Length says 200 MB: the answer comes after 1 MB of it, before the rest is sent.
    with socket.create_connection((host, port)) as sock:
        sock.sendall(f"{head}Content-Length: {200 << 20}\r\n\r\n".encode() + b'{"inputs": ' + chunk)
        status, answer = _read_answer(sock)
    assert status == 413 and re.search(rf"^Request body of {200 << 20} bytes is larger than the {limit_text}",
                                       answer["error"]), answer

    # A client that waits for "100 Continue" (curl does for large bodies) sends none of it.
    with socket.create_connection((host, port)) as sock:
        sock.sendall(f"{head}Content-Length: {200 << 20}\r\nExpect: 100-continue\r\n\r\n".encode())
        status, answer = _read_answer(sock)
    assert status == 413 and re.search(limit_text, answer["error"])

    # Chunked, without a length: refused as soon as more than the limit came.
    with socket.create_connection((host, port)) as sock:
        sock.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
        for _ in range(MAX_BODY // len(chunk) + 2):
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        status, answer = _read_answer(sock)
    assert status == 413 and re.search(rf"^Request body is larger than the {limit_text}", answer["error"])

    # The same through http.client, as a 200 MB request from any HTTP library: all of it sent, 413 back.
    connection = http.client.HTTPConnection(host, port, timeout=120)
    connection.request("POST", PREDICT, body=(chunk for _ in range(200)), headers={"Content-Length": str(200 << 20)})
    response = connection.getresponse()
    assert response.status == 413 and json.loads(response.read())["error"].startswith("Request body of")
    connection.close()
    assert call(server, "POST", PREDICT, {"inputs": _image(face_images)})[0] == 200
    assert server.core.status_counts["RESOURCE_EXHAUSTED"] >= 4


@pytest.mark.slow
def test_concurrent_rest_and_grpc_requests_share_batches_and_each_gets_its_answer(server, models, face_images):
    images = face_images[:8]
    _, _, heatmaps = expected_explanations(models[REGRESSOR], images, ["happy"] * 8)
    barrier = threading.Barrier(8)

    def explain(i: int) -> np.ndarray:
        # Half the requests over REST (raw JSON), half over gRPC, all for the same batch queue.
        if i % 2:
            body = {"signature_name": "explain", "instances": [{"image": images[i].tolist(), "target": "happy"}]}
            barrier.wait()
            status, _, answer = call(server, "POST", PREDICT, body)
            assert status == 200, answer
            return np.array(answer["predictions"][0]["heatmap"], dtype=np.float32)
        with ExplainerClient(server.address, REGRESSOR, timeout=300) as client:
            barrier.wait()
            return client.explain(images[i:i + 1], "happy").heatmap[0]

    key = f"{REGRESSOR}/1/explain"
    before = server.manager.batch_sizes().get(key, {})
    with ThreadPoolExecutor(8) as pool:
        results = np.stack(list(pool.map(explain, range(8))))
    assert_heatmaps_close(results, heatmaps)
    batches = {size: count - before.get(size, 0) for size, count in server.manager.batch_sizes()[key].items()}
    assert sum(size * count for size, count in batches.items()) == 8 and max(s for s, c in batches.items() if c) > 1


def test_the_rest_client_gives_the_grpc_clients_results_and_errors(server, grpc_client, face_images):
    images = face_images[6:9]
    with ExplainerClient(server.rest_address, REGRESSOR, timeout=120, batch_size=2) as client:
        assert client.channel is None
        predicted, expected = client.predict(images), grpc_client.predict(images)
        assert {k: v.dtype for k, v in predicted.items()} == {k: v.dtype for k, v in expected.items()}
        assert_predictions_close(predicted, expected)
        rest_result, grpc_result = client.explain(images, "attractive"), grpc_client.explain(images, "attractive")
        assert rest_result.target_names == grpc_result.target_names == ["attractive"] * 3
        assert rest_result.heatmap.dtype == np.float32
        assert_heatmaps_close(rest_result.heatmap, grpc_result.heatmap)
        np.testing.assert_allclose(rest_result.scores, grpc_result.scores, rtol=1e-5)
        for call_with in (client, grpc_client):
            with pytest.raises(ServingError, match=r"unknown target 'sad': the outputs of the model are happy") as caught:
                call_with.explain(images[:1], "sad")
            assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with ExplainerClient(server.rest_address, GENDER, version_label="nope") as client:
        with pytest.raises(ServingError, match="Unrecognized servable version label: nope") as caught:
            client.predict(images[:1])
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with ExplainerClient(server.rest_address, GENDER, version=1) as client:
        assert set(client.predict(images[:1])) == GENDER_KEYS
    with ExplainerClient(server.rest_address, "nope") as client:
        with pytest.raises(ServingError, match=r"nope at http://.*: Servable not found") as caught:
            client.predict(images[:1])
        assert caught.value.code == grpc.StatusCode.NOT_FOUND

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with ExplainerClient(f"http://127.0.0.1:{port}", GENDER, retries=1, backoff=0.05) as client:
        with pytest.raises(ServingError, match=r"is the server running\? retried 1 time") as caught:
            client.status()
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(ValueError, match="expected a REST address"):
        ExplainerClient("http://127.0.0.1:8501/v1/models", GENDER)


def test_the_rest_client_sends_fractional_and_nan_pixels_as_grpc_does(server, grpc_client, face_images):
    images = face_images[6:8] * 0.999 + 0.01  # no whole pixel values: the float path of the request body
    with ExplainerClient(server.rest_address, REGRESSOR, timeout=120) as client:
        assert_predictions_close(client.predict(images), grpc_client.predict(images))
        images[1, 5, 7, 2] = np.nan
        for call_with in (client, grpc_client):
            with pytest.raises(ServingError, match=r"input 'image' contains NaN or infinite values \(rows 1\)") as caught:
                call_with.predict(images)
            assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_request_bodies_carry_every_value_exactly():
    from psyattr.serving.transports import json_value, request_body

    rng = np.random.default_rng(0)
    inputs = {"image": (rng.random((2, 3, 4)) * 1e4).astype(np.float32), "whole": np.arange(6.0).reshape(2, 3),
              "target": np.array([b"happy", b"\xff\x00"], dtype=object), "count": np.array([3, -2]),
              "flag": np.array([True, False])}
    inputs["image"][0, 0, :2] = [1e-38, 3.4e38]
    body = json.loads(request_body("explain", inputs))
    assert body == json.loads(json.dumps({"signature_name": "explain",
                                          "inputs": {k: json_value(v) for k, v in inputs.items()}}))
    assert np.array_equal(np.array(body["inputs"]["image"], np.float32), inputs["image"])
    assert body["inputs"]["target"][1] == {"b64": base64.b64encode(b"\xff\x00").decode()}


def test_cli_predict_and_explain_ask_over_rest(server, grpc_client, omi_dir, tmp_path):
    images = [omi_dir / "images_256" / name for name in ("1.jpg", "2.jpg")]
    arrays = framed_inputs(images, grpc_client.framing)
    direct = grpc_client.predict(arrays)
    result = CliRunner().invoke(cli, ["predict", "--server", server.rest_address, "--model", REGRESSOR,
                                      *map(str, images)])
    assert result.exit_code == 0, result.output
    for i, line in enumerate(result.output.splitlines()):
        assert json.loads(line)["outputs"] == pytest.approx({k: float(v[i]) for k, v in direct.items()}, rel=1e-6)
    out = tmp_path / "heatmaps"
    result = CliRunner().invoke(cli, ["explain", "--server", server.rest_address, "--model", REGRESSOR, "--target",
                                      "happy", "--no-progress", "--out", str(out), str(images[0])])
    assert result.exit_code == 0, result.output
    assert f"at {server.rest_address} into" in result.output
    assert_heatmaps_close(np.load(out / "1.heatmap.npy")[None], grpc_client.explain(arrays[:1], "happy").heatmap)


def test_a_rest_port_in_use_is_refused_and_nothing_keeps_running(tmp_path):
    (tmp_path / "models").mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # XLA stays enabled in the test process: disabling it cannot be undone.
        server = ModelServer(tmp_path / "models", port=0, rest_port=port, xla_cpu_compilation_enabled=True)
        with pytest.raises(OSError, match=rf"cannot listen on 127\.0\.0\.1:{port} for REST.*--no-rest"):
            server.start()
    with ModelServer(tmp_path / "models", port=0, rest_port=0, xla_cpu_compilation_enabled=True) as server:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", server.rest_address) and server.rest_port != 0
        assert call(server, "GET", "/v1/models/nope")[0] == 404
    assert server.rest_address is None


@pytest.mark.slow
def test_serve_prints_both_addresses_and_stops_gracefully(server, tmp_path):
    import os
    import queue
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    models = server.manager.models_dir
    process = subprocess.Popen([sys.executable, "-m", "psyattr", "serve", "--models", str(models), "--config",
                                str(models / "models.config"), "--port", "0", "--rest-port", "0"], cwd=root, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    try:
        first = lines.get(timeout=180)
        match = re.match(r"serving .* on 127\.0\.0\.1:\d+ \(gRPC: .*\) and (http://127\.0\.0\.1:\d+) \(REST", first)
        assert match, first
        with urllib.request.urlopen(f"{match.group(1)}/v1/models/{GENDER}", timeout=60) as response:
            assert json.loads(response.read())["model_version_status"][0]["state"] == "AVAILABLE"
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0 and time.monotonic() - started < 60
        assert lines.get(timeout=10).strip() == "stopped"
    finally:
        if process.poll() is None:
            process.kill()


def test_large_float_responses_use_the_typed_fields_tf_serving_fills():
    """Packed into `float_val` / `double_val` (as TF Serving's AsProtoField writes), never `tensor_content`."""
    from tensorflow.core.framework import tensor_pb2

    from psyattr.serving.tensors import to_numpy, to_proto

    rng = np.random.default_rng(0)
    for array in (rng.random((16, 227, 227), dtype=np.float32), rng.random(3), np.float32(2.5) * np.ones((), np.float32),
                  np.zeros((0, 4), np.float32), np.array([1.5e-45, -0.0, np.inf, np.nan], np.float32)):
        proto = tensor_pb2.TensorProto.FromString(to_proto(array).SerializeToString())
        assert not proto.tensor_content and len(proto.float_val) + len(proto.double_val) == array.size
        np.testing.assert_array_equal(to_numpy(proto), array)
        assert to_numpy(proto).dtype == array.dtype and to_numpy(proto).shape == array.shape
