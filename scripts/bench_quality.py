#!/usr/bin/env python
"""Benchmark the explanation-quality study on the Levi-Hassner net: ms/image of every attribution method,
the cost of one perturbation step, and optionally a short region-perturbation run.

Methods are timed in interleaved rounds (every method once per round) so that their ratios compare numbers
measured under the same machine load. Without --model the age net gets random weights scaled so that
activations keep their size through the layers (as the LRP tests do). Usage:

    python scripts/bench_quality.py [--model SPEC] [--batch 8] [--rounds 3] [--methods ...] [--study-steps 0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from psyattr.models import build_base_model
from psyattr.models.loading import load_model
from psyattr.models.weights import randomize_weights
from psyattr.attribution import build_explainer, build_score_function, method_names
from psyattr.studies.quality import plot_perturbation_curves, quality_table_markdown, run_region_perturbation
from benchdata import faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model spec (default: the age net, scaled random weights)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=None, help=f"default: all of {', '.join(method_names())}")
    parser.add_argument("--smooth-samples", type=int, default=20)
    parser.add_argument("--study-steps", type=int, default=0, help="also run the study with this many steps")
    parser.add_argument("--patch", type=int, default=9)
    parser.add_argument("--out", default=None, help="folder for the study's plot and table")
    args = parser.parse_args()

    model = load_model(args.model) if args.model else randomize_weights(build_base_model("age"))
    images = faces(args.batch)
    targets = np.zeros(args.batch, np.int32)
    names = args.methods or list(method_names())
    print(f"{os.cpu_count()} CPU threads, TensorFlow {tf.__version__}, model {model.name}, batch {args.batch}")

    methods, setup = {}, {}
    for name in names:
        start = time.perf_counter()
        methods[name] = build_explainer(model, name, smooth_samples=args.smooth_samples)
        methods[name](images, targets)  # trace and compile
        setup[name] = time.perf_counter() - start
    score_fn = build_score_function(model)
    score_fn(images)
    times: dict[str, list[float]] = {name: [] for name in [*names, "perturbation step (forward)"]}
    for _ in range(args.rounds):
        for name, method in methods.items():
            start = time.perf_counter()
            method(images, targets)
            times[name].append((time.perf_counter() - start) * 1000 / args.batch)
        start = time.perf_counter()
        score_fn(images)
        times["perturbation step (forward)"].append((time.perf_counter() - start) * 1000 / args.batch)
    print(f"\n  {'method':28s} {'ms/image':>9s} {'first call s':>13s}")
    for name, values in times.items():
        first = f"{setup[name]:13.1f}" if name in setup else ""
        print(f"  {name:28s} {statistics.median(values):9.1f} {first}")

    if args.study_steps:
        start = time.perf_counter()
        results = run_region_perturbation(model, images, targets, names, steps=args.study_steps, patch=args.patch,
                                    batch_size=args.batch, smooth_samples=args.smooth_samples)
        print(f"\nstudy: {results.describe()} in {time.perf_counter() - start:.0f} s\n")
        print(quality_table_markdown(results))
        if args.out:
            plot_perturbation_curves(results, Path(args.out) / "perturbation_curves.png")


if __name__ == "__main__":
    main()
