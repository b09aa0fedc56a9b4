#!/usr/bin/env python
"""Benchmark explain over gRPC against the same explain in process: latency at batch 1, throughput at batch 16.

The model is exported to a temporary folder and served by `psyattr serve` in its own process (XLA
enabled, so that `explain_xla` runs too). In process, two things are timed: `LRPExplainer` (relevance
only) and the exported signature's function (relevance plus every model output), without XLA and with
it; over gRPC, one request at a time and, at batch 16, two in flight (a steady stream, whose transfers
overlap the other request's compute). Methods are timed in interleaved rounds, so that the printed
ratios compare numbers measured under the same machine load. `--rest` instead compares the REST API
with gRPC at batch 16: time per image of `serving_default` and `explain` through `ExplainerClient`, and
the bytes per image on the wire. At batch 1, one photo file through `explain_image` is timed end to end
too (framing by the detector included). Usage:

    python scripts/bench_serving.py [--model age] [--rounds 30] [--rounds-16 5] [--server HOST:PORT --name NAME]
    python scripts/bench_serving.py --rest [--rounds-16 5] [--server HOST:PORT --rest-server http://HOST:PORT]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from benchdata import faces

# Without XLA, then with it: LRPExplainer in process (relevance only), the exported signature's function
# in process (relevance plus every model output), and that signature served over gRPC.
# A photo as users bring it: one OMI face file (its detector framing runs in the timed call).
PHOTO = Path(os.environ.get("PSYATTR_DATA_DIR", "../shared/data")) / "omi" / "images_256" / "1.jpg"
GROUPS = (("LRPExplainer", "signature explain", "gRPC explain"),
          ("LRPExplainer, XLA", "signature explain_xla", "gRPC explain_xla"))


def start_server(models_dir: Path) -> tuple[subprocess.Popen, str, str]:
    """`psyattr serve` on free loopback ports, XLA enabled; returns the process and its gRPC and REST addresses."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen([sys.executable, "-m", "psyattr", "serve", "--models", str(models_dir), "--port", "0",
                                "--rest-port", "0", "--xla-cpu-compilation-enabled"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()
    match = re.search(r" on (\S+:\d+) .* and (http://\S+:\d+) ", line)
    if not match:
        process.kill()
        raise RuntimeError(f"psyattr serve did not start: {line!r}")
    threading.Thread(target=process.stdout.read, daemon=True).start()  # keep its stdout drained
    return process, match.group(1), match.group(2)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(np.ceil(q / 100 * len(ordered))) - 1))]


def timed(calls: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each method, in interleaved rounds after one warm-up call each."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def rest_against_grpc(address: str, rest_address: str, name: str, rounds: int) -> None:
    """Print REST against gRPC at batch 16: ms per image (median over interleaved rounds) and bytes per image."""
    import tensorflow as tf
    import urllib3
    from tensorflow_serving.apis import predict_pb2

    from psyattr.serving import ExplainerClient
    from psyattr.serving.transports import GrpcTransport, Target, read_json, request_body

    images = faces(16)
    targets = np.array([b"0"] * 16, dtype=object)
    with ExplainerClient(address, name, timeout=600, batch_size=16) as grpc_client, \
            ExplainerClient(rest_address, name, timeout=600, batch_size=16) as rest_client:
        calls = {"gRPC serving_default": lambda: grpc_client.predict(images),
                 "REST serving_default": lambda: rest_client.predict(images),
                 "gRPC explain": lambda: grpc_client.explain(images, 0),
                 "REST explain": lambda: rest_client.explain(images, 0)}
        grpc_heatmap, rest_heatmap = grpc_client.explain(images, 0).heatmap, rest_client.explain(images, 0).heatmap
        times = timed(calls, rounds)

    request = predict_pb2.PredictRequest()
    Target(name).fill(request.model_spec, "explain")
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(images))
    request.inputs["target"].CopyFrom(tf.make_tensor_proto(targets))
    transport = GrpcTransport(address, 600, 512 << 20)
    grpc_answer = transport.prediction.Predict(request, timeout=600).ByteSize()
    transport.close()
    body = request_body("explain", {"image": images, "target": targets})
    rest_answer = urllib3.connection_from_url(rest_address).request(
        "POST", f"/v1/models/{name}:predict", body=body, timeout=600.0).data
    start = time.perf_counter()
    np.array(read_json(rest_answer)["outputs"]["heatmap"], dtype=np.float32)
    decode = time.perf_counter() - start

    print(f"\nbatch 16, REST against gRPC, ms per image over {rounds} interleaved rounds (median)")
    print(f"  {'method':24s} {'ms/image':>9s} {'x gRPC':>7s}")
    for signature in ("serving_default", "explain"):
        base = statistics.median(times[f"gRPC {signature}"]) / 16
        for protocol in ("gRPC", "REST"):
            value = statistics.median(times[f"{protocol} {signature}"]) / 16
            print(f"  {protocol + ' ' + signature:24s} {value * 1e3:9.1f} {value / base:7.2f}")
    print(f"explain bytes per image: request gRPC {request.ByteSize() / 16:,.0f}, REST {len(body) / 16:,.0f}; "
          f"answer gRPC {grpc_answer / 16:,.0f}, REST {len(rest_answer) / 16:,.0f} "
          f"(x{len(rest_answer) / grpc_answer:.2f})")
    print(f"client-side JSON decode of one REST explain answer: {decode / 16 * 1e3:.1f} ms per image; "
          f"REST and gRPC heatmaps differ by {np.abs(rest_heatmap - grpc_heatmap).max():.2g} at most")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model spec (default: the age net, random weights)")
    parser.add_argument("--composite", default="alpha2beta1")
    parser.add_argument("--rounds", type=int, default=30, help="rounds at batch 1 (latency percentiles)")
    parser.add_argument("--rounds-16", type=int, default=5, help="rounds at batch 16 (throughput)")
    parser.add_argument("--server", help="benchmark this running server instead of starting one (needs --name)")
    parser.add_argument("--name", default="psyattr_bench", help="served model name")
    parser.add_argument("--rest", action="store_true", help="only compare the REST API with gRPC at batch 16")
    parser.add_argument("--rest-server", help="the REST address of --server (http://HOST:PORT)")
    args = parser.parse_args()

    import tensorflow as tf

    from psyattr.export import SignatureBuilder, export_model
    from psyattr.lrp import LRPExplainer
    from psyattr.faces import get_framing
    from psyattr.models import build_base_model
    from psyattr.models.loading import load_model
    from psyattr.serving import ExplainerClient

    model = load_model(args.model) if args.model else build_base_model("age", framing=get_framing("utkface").to_json())
    with tempfile.TemporaryDirectory() as tmp:
        process = None
        if args.server:
            address, rest_address = args.server, args.rest_server
        else:
            export_model(model, tmp, args.name, composite=args.composite)
            process, address, rest_address = start_server(Path(tmp))
        if args.rest:
            print(f"{os.cpu_count()} CPU threads, TensorFlow {tf.__version__}; served by "
                  f"{'psyattr serve (own process)' if process else address}; {args.composite}")
            try:
                rest_against_grpc(address, rest_address, args.name, args.rounds_16)
            finally:
                if process is not None:
                    process.terminate()
                    process.wait(60)
            return
        local = [LRPExplainer(model, args.composite, jit_compile=False),
                 LRPExplainer(model, args.composite, jit_compile=True)]
        signatures = SignatureBuilder(model, args.composite).functions
        client = ExplainerClient(address, args.name, timeout=600, batch_size=16)
        second = ExplainerClient(address, args.name, timeout=600, batch_size=16)
        pool = ThreadPoolExecutor(2)
        print(f"{os.cpu_count()} CPU threads, TensorFlow {tf.__version__}; served by "
              f"{'psyattr serve (own process)' if process else address}; {args.composite}")
        try:
            results = {}
            for batch, rounds in ((1, args.rounds), (16, args.rounds_16)):
                images = faces(batch)
                inputs = (tf.constant(images), tf.constant([b"0"] * batch))
                calls = {}
                for (local_name, signature_name, served_name), explainer in zip(GROUPS, local):
                    xla = served_name.endswith("xla")
                    function = signatures["explain_xla" if xla else "explain"]
                    calls[local_name] = lambda e=explainer, x=images: e(x, 0)
                    calls[signature_name] = lambda f=function, x=inputs: f(*x)["heatmap"].numpy()
                    calls[served_name] = lambda x=images, jit=xla: client.explain(x, 0, xla=jit)
                    if batch == 16:
                        # A steady stream, as a serving benchmark keeps a server busy: two requests in flight,
                        # so that one's transfer overlaps the other's compute.
                        calls[f"{served_name}, 2 in flight"] = lambda x=images, jit=xla: [
                            f.result() for f in [pool.submit(c.explain, x, 0, xla=jit) for c in (client, second)]]
                if batch == 1:
                    # One photo file end to end: framed here by the detector, sent as PNG to explain_image.
                    calls["gRPC explain_image photo"] = lambda: client.explain_photos([PHOTO], 0)
                results[batch] = timed(calls, rounds)
        finally:
            pool.shutdown()
            client.close()
            second.close()
            if process is not None:
                process.terminate()
                process.wait(60)

    print(f"\nbatch 1, explain latency in ms over {args.rounds} rounds")
    print(f"  {'method':24s} {'p50':>8s} {'p99':>8s} {'p50 x LRPExplainer':>19s}")
    for group in GROUPS:
        base = statistics.median(results[1][group[0]])
        for name in group:
            values = results[1][name]
            print(f"  {name:24s} {statistics.median(values) * 1e3:8.1f} {percentile(values, 99) * 1e3:8.1f} "
                  f"{statistics.median(values) / base:19.2f}")
    values = results[1]["gRPC explain_image photo"]
    print(f"  {'gRPC explain_image photo':24s} {statistics.median(values) * 1e3:8.1f} {percentile(values, 99) * 1e3:8.1f} "
          f"{statistics.median(values) / statistics.median(results[1][GROUPS[0][0]]):19.2f}  (a photo file, framed here)")
    print(f"\nbatch 16, explain throughput in images/s over {args.rounds_16} rounds (median)")
    print(f"  {'method':34s} {'images/s':>9s} {'x LRPExplainer':>15s}")
    for group in GROUPS:
        base = 16 / statistics.median(results[16][group[0]])
        for name in (*group, f"{group[2]}, 2 in flight"):
            rate = (32 if name.endswith("in flight") else 16) / statistics.median(results[16][name])
            print(f"  {name:34s} {rate:9.2f} {rate / base:15.2f}")


if __name__ == "__main__":
    main()
