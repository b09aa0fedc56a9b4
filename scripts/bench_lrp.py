#!/usr/bin/env python
"""Benchmark LRP on the Levi-Hassner net: median ms/image for forward, input gradient and each composite.

Methods are timed in interleaved rounds (every method once per round), so that the ratios printed at the
end compare numbers measured under the same machine load. Usage:

    python scripts/bench_lrp.py [--model age] [--batches 1 16] [--rounds 7] [--no-eager] [--per-layer alpha2beta1]

`--per-layer NAME` also times NAME with LRP-epsilon put on one linear layer at a time, and prints what NAME's
rule costs on each layer over epsilon's: where a composite's time goes beyond the cheapest rule.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import tensorflow as tf

from psyattr.lrp import LRPExplainer, checks
from psyattr.lrp.composites import COMPOSITES, get_composite
from psyattr.lrp.graph import flatten_model
from psyattr.lrp.rules import Epsilon
from psyattr.models import build_base_model
from psyattr.models.loading import load_model
from benchdata import faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model spec (default: the age net, random weights)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-eager", action="store_true", help="skip the eager (non-XLA) composites")
    parser.add_argument("--per-layer", metavar="NAME", choices=sorted(COMPOSITES),
                        help="time NAME with epsilon on one linear layer at a time (see above)")
    args = parser.parse_args()

    model = load_model(args.model) if args.model else build_base_model("age")
    forward = tf.function(lambda x: model(x, training=False), jit_compile=True)
    methods = {"forward (jit)": None, "gradient (jit)": LRPExplainer(model, "gradient", jit_compile=True)}
    for name in COMPOSITES:
        methods[f"{name} (jit)"] = LRPExplainer(model, name, jit_compile=True)
        if not args.no_eager:
            methods[f"{name} (eager)"] = LRPExplainer(model, name, jit_compile=False)
    swapped = {}
    if args.per_layer:
        composite = get_composite(args.per_layer)
        for node in flatten_model(model)[0]:
            if checks.is_linear_layer(node.layer):
                swapped[node.layer.name] = f"{args.per_layer}, epsilon on {node.layer.name}"
                methods[swapped[node.layer.name]] = LRPExplainer(
                    model, composite.with_layer_rules({node.layer.name: Epsilon()}), jit_compile=True)
    print(f"{os.cpu_count()} CPU threads, TensorFlow {tf.__version__}; median ms/image over {args.rounds} rounds")

    for batch in args.batches:
        images = faces(batch)
        tensor = tf.constant(images)
        calls = {name: (lambda e=e, x=images: e(x, 0)) if e is not None else (lambda t=tensor: forward(t).numpy())
                 for name, e in methods.items()}
        for call in calls.values():  # compile and warm up
            call()
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.rounds):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                times[name].append((time.perf_counter() - start) * 1000 / batch)
        base = statistics.median(times["gradient (jit)"])
        print(f"\nbatch {batch}")
        print(f"  {'method':34s} {'ms/image':>9s} {'x jit gradient':>15s}")
        for name, values in times.items():
            median = statistics.median(values)
            print(f"  {name:34s} {median:9.2f} {median / base:15.2f}")
        if swapped:
            whole = statistics.median(times[f"{args.per_layer} (jit)"])
            print(f"  {args.per_layer}'s rule over epsilon's, per layer (ms/image; the sum is the gap to epsilon "
                  "when the layers' costs add up):")
            for layer, name in swapped.items():
                print(f"    {layer:32s} {whole - statistics.median(times[name]):9.2f}")


if __name__ == "__main__":
    main()
