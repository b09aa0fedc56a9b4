#!/usr/bin/env python
"""Benchmark explain over gRPC against the same explain in process: latency at batch 1, throughput at batch 16.

The model is exported to a temporary folder and served by `psyattr serve` in its own process (XLA
enabled, so that `explain_xla` runs too). In process, two things are timed: `LRPExplainer` (relevance
only) and the exported signature's function (relevance plus every model output), without XLA and with
it. Methods are timed in interleaved rounds, so that the printed ratios compare numbers measured under
the same machine load. Usage:

    python scripts/bench_serving.py [--model age] [--rounds 30] [--rounds-16 5] [--server HOST:PORT --name NAME]
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
from pathlib import Path

import numpy as np
from benchdata import faces

# Without XLA, then with it: LRPExplainer in process (relevance only), the exported signature's function
# in process (relevance plus every model output), and that signature served over gRPC.
GROUPS = (("LRPExplainer", "signature explain", "gRPC explain"),
          ("LRPExplainer, XLA", "signature explain_xla", "gRPC explain_xla"))


def start_server(models_dir: Path) -> tuple[subprocess.Popen, str]:
    """`psyattr serve` on a free loopback port, XLA enabled; returns the process and its address."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen([sys.executable, "-m", "psyattr", "serve", "--models", str(models_dir), "--port", "0",
                                "--xla-cpu-compilation-enabled"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()
    match = re.search(r" on (\S+:\d+) ", line)
    if not match:
        process.kill()
        raise RuntimeError(f"psyattr serve did not start: {line!r}")
    threading.Thread(target=process.stdout.read, daemon=True).start()  # keep its stdout drained
    return process, match.group(1)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model spec (default: the age net, random weights)")
    parser.add_argument("--composite", default="alpha2beta1")
    parser.add_argument("--rounds", type=int, default=30, help="rounds at batch 1 (latency percentiles)")
    parser.add_argument("--rounds-16", type=int, default=5, help="rounds at batch 16 (throughput)")
    parser.add_argument("--server", help="benchmark this running server instead of starting one (needs --name)")
    parser.add_argument("--name", default="psyattr_bench", help="served model name")
    args = parser.parse_args()

    import tensorflow as tf

    from psyattr.export import SignatureBuilder, export_model
    from psyattr.lrp import LRPExplainer
    from psyattr.models import build_base_model
    from psyattr.models.loading import load_model
    from psyattr.serving import ExplainerClient

    model = load_model(args.model) if args.model else build_base_model("age")
    local = [LRPExplainer(model, args.composite, jit_compile=False), LRPExplainer(model, args.composite, jit_compile=True)]
    signatures = SignatureBuilder(model, args.composite).functions
    with tempfile.TemporaryDirectory() as tmp:
        process = None
        if args.server:
            address = args.server
        else:
            export_model(model, tmp, args.name, composite=args.composite)
            process, address = start_server(Path(tmp))
        client = ExplainerClient(address, args.name, timeout=600, batch_size=16)
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
                results[batch] = timed(calls, rounds)
        finally:
            client.close()
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
    print(f"\nbatch 16, explain throughput in images/s over {args.rounds_16} rounds (median)")
    print(f"  {'method':24s} {'images/s':>9s} {'x LRPExplainer':>15s}")
    for group in GROUPS:
        base = 16 / statistics.median(results[16][group[0]])
        for name in group:
            rate = 16 / statistics.median(results[16][name])
            print(f"  {name:24s} {rate:9.2f} {rate / base:15.2f}")


if __name__ == "__main__":
    main()
