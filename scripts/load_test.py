#!/usr/bin/env python
"""Load test: concurrent clients send a fixed mix of valid and invalid requests to the embedded server.

Every valid answer is checked against in-process Keras and LRP, to 1e-4 of each output's range: the
server batches requests from different clients, and float rounding depends on the batch size (by up to
3e-5 on the default net, in process too). Every invalid request must get its expected gRPC status,
and the server may answer INTERNAL only to explain_xla (as TF Serving does without XLA). Exits 1 on any
mismatch. The model is exported to a temporary folder and served in this process on a free loopback port, with
XLA disabled as TF Serving does by default. Usage:

    python scripts/load_test.py [--clients 8] [--requests 24] [--model age]
"""

from __future__ import annotations

import argparse
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
# Half of the requests are valid: each client cycles through this schedule from its own offset.
SCHEDULE = [kind for pair in zip(["predict", "explain"] * 5, INVALID) for kind in pair]


def build_request(kind: str, name: str, images: np.ndarray, index: int):
    """A PredictRequest of the given kind for image `index`."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "nope" if kind == "unknown model" else name
    request.model_spec.signature_name = {"explain": "explain", "unknown target": "explain", "unknown signature": "nope",
                                         "explain_xla without XLA": "explain_xla"}.get(kind, "serving_default")
    if kind == "unknown version":
        request.model_spec.version.value = 99
    image = images[index:index + 1]
    image = {"wrong dtype": image.astype(np.float64), "wrong shape": image[:, :200], "empty batch": image[:0],
             "NaN pixels": np.where(np.arange(3) == 1, np.nan, image).astype(np.float32)}.get(kind, image)
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(image))
    if request.model_spec.signature_name.startswith("explain"):
        target = b"nope" if kind == "unknown target" else b""
        request.inputs["target"].CopyFrom(tf.make_tensor_proto(np.array([target], dtype=object)))
    if kind == "missing input":
        request.inputs.clear()
    return request


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=24, help="requests per client")
    parser.add_argument("--model", default=None, help="model spec (default: the age net, random weights)")
    args = parser.parse_args()

    import keras
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from psyattr.export import export_model, local_predictor
    from psyattr.lrp import LRPExplainer
    from psyattr.models import build_base_model
    from psyattr.models.loading import load_model
    from psyattr.serving import ModelServer

    keras.utils.set_random_seed(0)
    model = load_model(args.model) if args.model else build_base_model("age")
    images = faces(4)
    # References: serving_default by the same graph in process, heatmaps by the explainer without XLA.
    expected_outputs = local_predictor(model)(images)
    explainer = LRPExplainer(model, "alpha2beta1", jit_compile=False)
    tops = explainer.resolve_targets(None, len(images), images)
    expected_heatmaps = explainer(images, tops).relevance.sum(axis=-1)

    failures: list[str] = []
    statuses: Counter[tuple[str, str]] = Counter()
    latencies: dict[str, list[float]] = {"valid": [], "invalid": []}
    lock = threading.Lock()

    def run_client(client_id: int, address: str) -> None:
        channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for i in range(args.requests):
            kind = SCHEDULE[(client_id * 3 + i) % len(SCHEDULE)]
            index = (client_id + i) % len(images)
            request = build_request(kind, "psyattr_load", images, index)
            start = time.perf_counter()
            try:
                response = stub.Predict(request, timeout=300)
                code, problem = grpc.StatusCode.OK, None
            except grpc.RpcError as err:
                code, problem, response = err.code(), err.details(), None
            elapsed = time.perf_counter() - start
            expected = grpc.StatusCode.OK if kind in VALID else INVALID[kind]
            message = None
            if code != expected:
                message = f"client {client_id} request {i} ({kind}): {code.name} {problem!r}, expected {expected.name}"
            elif response is not None:
                outputs = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
                for key, value in expected_outputs.items():
                    if np.abs(outputs[key] - value[index:index + 1]).max() > TOLERANCE * np.abs(value).max():
                        message = f"client {client_id} request {i} ({kind}): {key} differs from in-process Keras"
                if kind == "explain":
                    reference = expected_heatmaps[index]
                    if np.abs(outputs["heatmap"][0] - reference).max() > TOLERANCE * np.abs(reference).max():
                        message = f"client {client_id} request {i}: heatmap differs from in-process LRP"
            with lock:
                statuses[(kind, code.name)] += 1
                latencies["valid" if kind in VALID else "invalid"].append(elapsed)
                if message:
                    failures.append(message)
        channel.close()

    with tempfile.TemporaryDirectory() as tmp:
        export_model(model, tmp, "psyattr_load")
        server = ModelServer(tmp, port=0).start()  # XLA disabled, as TF Serving by default
        try:
            start = time.perf_counter()
            threads = [threading.Thread(target=run_client, args=(c, server.address)) for c in range(args.clients)]
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
    print(f"{args.clients} clients x {args.requests} requests = {total} in {wall:.1f} s ({total / wall:.1f} req/s)")
    print(f"  {'kind':26s} {'status':20s} {'count':>5s}")
    for (kind, code), count in sorted(statuses.items()):
        print(f"  {kind:26s} {code:20s} {count:5d}")
    for group, values in latencies.items():
        if values:
            print(f"{group} requests: {len(values)}, median {np.median(values) * 1e3:.0f} ms, "
                  f"max {max(values) * 1e3:.0f} ms")
    runs = sum(batches.values())
    print(f"server statuses: {server_counts}; batches run: {runs}, requests per batch: max {max(batches, default=0)}, "
          f"mean {sum(size * n for size, n in batches.items()) / max(runs, 1):.2f}")
    valid_errors = sum(n for (kind, code), n in statuses.items() if kind in VALID and code != "OK")
    print(f"valid requests answered with an error: {valid_errors}; mismatches: {len(failures)}")
    for failure in failures:
        print(f"  {failure}")
    # The only INTERNAL answers allowed are the explain_xla ones, which TF Serving gives the same way.
    unexpected_internal = server_counts.get("INTERNAL", 0) - statuses[("explain_xla without XLA", "INTERNAL")]
    return 1 if failures or unexpected_internal else 0


if __name__ == "__main__":
    sys.exit(main())
