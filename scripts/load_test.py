#!/usr/bin/env python
"""Load test: concurrent clients send a fixed mix of valid and invalid requests to the embedded server.

Part of the clients (`--rest-clients`, half by default) send the same requests as JSON to the REST API,
the others over gRPC; both land in the same batches. Every valid answer is checked against in-process
Keras and LRP, to 1e-4 of each output's range: the server batches requests from different clients, and
float rounding depends on the batch size (by up to 3e-5 on the default net, in process too). Every
invalid request must get its expected status (over REST: the HTTP status TF Serving gives that code, and
the code in the X-Grpc-Code header), and the server may answer INTERNAL only to explain_xla (as TF
Serving does without XLA). Exits 1 on any mismatch. The model is exported to a temporary folder and
served in this process on free loopback ports, with XLA disabled as TF Serving does by default.

`--poisoned-clients` (a quarter by default) send nothing but poisoned requests, concurrently with the
others and into the same batches: targets that look like indices to a careless check (Arabic-Indic and
superscript digits, fullwidth digits), a 10 MB target, and photos that are no image. Each must get
INVALID_ARGUMENT quoting only its own input, and no valid request may fail or differ because of them. Usage:

    python scripts/load_test.py [--clients 8] [--rest-clients 4] [--poisoned-clients 2] [--requests 24] [--model age]
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import threading
import time
from collections import Counter

import grpc
import numpy as np
from benchdata import faces

VALID = ("predict", "explain")
TOLERANCE = 1e-4  # of each output's range over the test images
# kind -> expected status
INVALID = {
    "unknown model": grpc.StatusCode.NOT_FOUND,
    "unknown version": grpc.StatusCode.NOT_FOUND,
    "unknown signature": grpc.StatusCode.FAILED_PRECONDITION,
    "missing input": grpc.StatusCode.INVALID_ARGUMENT,
    "wrong dtype": grpc.StatusCode.INVALID_ARGUMENT,
    "wrong shape": grpc.StatusCode.INVALID_ARGUMENT,
    "empty batch": grpc.StatusCode.INVALID_ARGUMENT,
    "NaN pixels": grpc.StatusCode.INVALID_ARGUMENT,
    "unknown target": grpc.StatusCode.INVALID_ARGUMENT,
    "explain_xla without XLA": grpc.StatusCode.INTERNAL,
}
# Requests meant to break a shared batch: each must be refused on its own, as INVALID_ARGUMENT.
POISONED = {
    "Arabic-Indic digit target": "\u0660",
    "superscript digit target": "\u00b2",
    "fullwidth digit target": "\uff11",
    "10 MB target": "9" * (10 << 20),
    "photo that is no image": None,
}
INVALID.update({kind: grpc.StatusCode.INVALID_ARGUMENT for kind in POISONED})
# TF Serving's REST API answers a wrong signature name with INVALID_ARGUMENT, and JSON has no float64: a
# REST "wrong dtype" sends the pixels as strings.
REST_INVALID = {**INVALID, "unknown signature": grpc.StatusCode.INVALID_ARGUMENT}
# Half of the requests are valid: each client cycles through this schedule from its own offset.
SCHEDULE = [kind for pair in zip(["predict", "explain"] * 5, [k for k in INVALID if k not in POISONED]) for kind in pair]


def _signature(kind: str) -> str:
    if kind == "photo that is no image":
        return "explain_image"
    if kind in POISONED or kind in ("explain", "unknown target"):
        return "explain"
    return {"unknown signature": "nope", "explain_xla without XLA": "explain_xla"}.get(kind, "serving_default")


def _target(kind: str) -> str:
    return "nope" if kind == "unknown target" else POISONED.get(kind) or ""


def _quotes_another(message: str, kind: str) -> bool:
    """Whether an error message quotes a poisoned target other than the request's own."""
    own = _target(kind)
    return any(f"target {other[:64]!r}" in message for other in POISONED.values() if other and other != own)


def build_request(kind: str, name: str, images: np.ndarray, index: int):
    """A PredictRequest of the given kind for image `index`."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "nope" if kind == "unknown model" else name
    request.model_spec.signature_name = _signature(kind)
    if kind == "unknown version":
        request.model_spec.version.value = 99
    image = images[index:index + 1]
    image = {"wrong dtype": image.astype(np.float64), "wrong shape": image[:, :200], "empty batch": image[:0],
             "NaN pixels": np.where(np.arange(3) == 1, np.nan, image).astype(np.float32)}.get(kind, image)
    if kind == "photo that is no image":
        request.inputs["photo"].CopyFrom(tf.make_tensor_proto(np.array([b"GIF89a not really"], dtype=object)))
    else:
        request.inputs["image"].CopyFrom(tf.make_tensor_proto(image))
    if request.model_spec.signature_name.startswith("explain"):
        request.inputs["target"].CopyFrom(tf.make_tensor_proto(np.array([_target(kind).encode()], dtype=object)))
    if kind == "missing input":
        request.inputs.clear()
    return request


def build_rest_request(kind: str, name: str, images: np.ndarray, index: int) -> tuple[str, bytes]:
    """The REST path and JSON body (columnar format) of a request of the given kind for image `index`."""
    import json

    path = f"/v1/models/{'nope' if kind == 'unknown model' else name}"
    path += "/versions/99:predict" if kind == "unknown version" else ":predict"
    signature = _signature(kind)
    image = images[index:index + 1]
    image = {"wrong shape": image[:, :200], "empty batch": image[:0],
             "NaN pixels": np.where(np.arange(3) == 1, np.nan, image)}.get(kind, image).tolist()
    if kind == "wrong dtype":
        image = [[[[str(v) for v in pixel] for pixel in row] for row in picture] for picture in image]
    inputs = {"image": image}
    if kind == "photo that is no image":
        import base64

        inputs = {"photo": [{"b64": base64.b64encode(b"GIF89a not really").decode()}]}
    if signature.startswith("explain"):
        inputs["target"] = [_target(kind)]
    if kind == "missing input":
        inputs = {}
    return path, json.dumps({"signature_name": signature, "inputs": inputs}).encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rest-clients", type=int, default=None, help="how many clients use REST (default: half)")
    parser.add_argument("--poisoned-clients", type=int, default=None,
                        help="how many clients send only poisoned requests (default: a quarter)")
    parser.add_argument("--requests", type=int, default=24, help="requests per client")
    parser.add_argument("--model", default=None, help="model spec (default: the age net, random weights)")
    args = parser.parse_args()
    rest_clients = args.clients // 2 if args.rest_clients is None else min(args.rest_clients, args.clients)
    poisoned_clients = args.clients // 4 if args.poisoned_clients is None else min(args.poisoned_clients, args.clients)
    # The last clients of each protocol in turn, so that both protocols carry poison when there are two or more.
    order = [c for pair in zip(reversed(range(rest_clients)), reversed(range(rest_clients, args.clients))) for c in pair]
    order += [c for c in reversed(range(args.clients)) if c not in order]
    poisoned_ids = set(order[:poisoned_clients])

    import json

    import keras
    import urllib3
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from psyattr.export import export_model, local_predictor
    from psyattr.lrp import LRPExplainer
    from psyattr.faces import get_framing
    from psyattr.models import build_base_model
    from psyattr.models.loading import load_model
    from psyattr.serving import ModelServer
    from psyattr.serving.errors import CODE_HEADER, http_status

    keras.utils.set_random_seed(0)
    model = load_model(args.model) if args.model else build_base_model("age", framing=get_framing("utkface").to_json())
    images = faces(4)
    # References: serving_default by the same graph in process, heatmaps by the explainer without XLA.
    expected_outputs = local_predictor(model)(images)
    explainer = LRPExplainer(model, "alpha2beta1", jit_compile=False)
    tops = explainer.resolve_targets(None, len(images), images)
    expected_heatmaps = explainer(images, tops).relevance.sum(axis=-1)

    failures: list[str] = []
    statuses: Counter[tuple[str, str, str]] = Counter()
    latencies: dict[str, list[float]] = {f"{p} {g}": [] for p in ("gRPC", "REST") for g in ("valid", "invalid")}
    lock = threading.Lock()

    def grpc_call(stub, kind: str, index: int):
        try:
            response = stub.Predict(build_request(kind, "psyattr_load", images, index), timeout=300)
        except grpc.RpcError as err:
            return err.code(), err.details(), None
        return grpc.StatusCode.OK, None, {k: tf.make_ndarray(v) for k, v in response.outputs.items()}

    def rest_call(pool, kind: str, index: int):
        path, body = build_rest_request(kind, "psyattr_load", images, index)
        response = pool.request("POST", path, body=body, timeout=300.0, retries=False)
        code = grpc.StatusCode[response.headers[CODE_HEADER]]
        answer = json.loads(response.data)
        if response.status != http_status(code):
            return code, f"HTTP {response.status} for {code.name}", None
        if code != grpc.StatusCode.OK:
            return code, answer["error"], None
        return code, None, {k: np.array(v, dtype=np.float32) for k, v in answer["outputs"].items() if k != "target"}

    def run_client(client_id: int, address: str, rest_address: str) -> None:
        rest = client_id < rest_clients
        if rest:
            pool = urllib3.connection_from_url(rest_address)
            send = functools.partial(rest_call, pool)
        else:
            channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            send = functools.partial(grpc_call, stub)
        protocol = "REST" if rest else "gRPC"
        poisoned = client_id in poisoned_ids
        for i in range(args.requests):
            kind = list(POISONED)[i % len(POISONED)] if poisoned else SCHEDULE[(client_id * 3 + i) % len(SCHEDULE)]
            index = (client_id + i) % len(images)
            start = time.perf_counter()
            code, problem, outputs = send(kind, index)
            elapsed = time.perf_counter() - start
            expected = grpc.StatusCode.OK if kind in VALID else (REST_INVALID if rest else INVALID)[kind]
            message = None
            if code != expected:
                message = (f"{protocol} client {client_id} request {i} ({kind}): {code.name} {problem[:200]!r}, "
                           f"expected {expected.name}")
            elif problem is not None and _quotes_another(problem, kind):
                message = f"{protocol} client {client_id} request {i} ({kind}): its error quotes another's input"
            elif problem is not None and len(problem) > 1000:
                message = f"{protocol} client {client_id} request {i} ({kind}): a {len(problem)}-character error"
            elif outputs is not None:
                for key, value in expected_outputs.items():
                    if np.abs(outputs[key] - value[index:index + 1]).max() > TOLERANCE * np.abs(value).max():
                        message = f"client {client_id} request {i} ({kind}): {key} differs from in-process Keras"
                if kind == "explain":
                    reference = expected_heatmaps[index]
                    if np.abs(outputs["heatmap"][0] - reference).max() > TOLERANCE * np.abs(reference).max():
                        message = f"client {client_id} request {i}: heatmap differs from in-process LRP"
            with lock:
                statuses[(protocol, kind, code.name)] += 1
                latencies[f"{protocol} {'valid' if kind in VALID else 'invalid'}"].append(elapsed)
                if message:
                    failures.append(message)
        if rest:
            pool.close()
        else:
            channel.close()

    with tempfile.TemporaryDirectory() as tmp:
        export_model(model, tmp, "psyattr_load")
        server = ModelServer(tmp, port=0, rest_port=0).start()  # XLA disabled, as TF Serving by default
        try:
            start = time.perf_counter()
            threads = [threading.Thread(target=run_client, args=(c, server.address, server.rest_address))
                       for c in range(args.clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - start
            batches = sum(server.manager.batch_sizes().values(), Counter())  # requests per batch -> batches
            server_counts = dict(server.core.status_counts)
        finally:
            server.stop()

    total = args.clients * args.requests
    print(f"{args.clients} clients ({rest_clients} over REST, {poisoned_clients} poisoned) x {args.requests} requests "
          f"= {total} in {wall:.1f} s "
          f"({total / wall:.1f} req/s)")
    print(f"  {'protocol':8s} {'kind':26s} {'status':20s} {'count':>5s}")
    for (protocol, kind, code), count in sorted(statuses.items()):
        print(f"  {protocol:8s} {kind:26s} {code:20s} {count:5d}")
    for group, values in latencies.items():
        if values:
            print(f"{group} requests: {len(values)}, median {np.median(values) * 1e3:.0f} ms, "
                  f"max {max(values) * 1e3:.0f} ms")
    runs = sum(batches.values())
    print(f"server statuses: {server_counts}; batches run: {runs}, requests per batch: max {max(batches, default=0)}, "
          f"mean {sum(size * n for size, n in batches.items()) / max(runs, 1):.2f}")
    valid_errors = sum(n for (_, kind, code), n in statuses.items() if kind in VALID and code != "OK")
    print(f"valid requests answered with an error: {valid_errors}; mismatches: {len(failures)}")
    for failure in failures:
        print(f"  {failure}")
    # The only INTERNAL answers allowed are the explain_xla ones, which TF Serving gives the same way.
    unexpected_internal = server_counts.get("INTERNAL", 0) - sum(
        n for (_, kind, code), n in statuses.items() if (kind, code) == ("explain_xla without XLA", "INTERNAL"))
    return 1 if failures or unexpected_internal else 0


if __name__ == "__main__":
    sys.exit(main())
