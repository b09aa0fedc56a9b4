#!/usr/bin/env python
"""Benchmark one fine-tuning epoch: dense mode on cached features vs full mode on images (same run, same data).

    PSYATTR_DATA_DIR=../shared/data python scripts/bench_transfer.py [--base age] [--epochs 3]

Prints seconds per epoch of each mode (median over --epochs epochs after one warm-up epoch), the one-off
cost of computing the cached features, and the ratio full / dense.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from psyattr.data.cache import decode_images
from psyattr.data.pipeline import train_dataset
from psyattr.data.rated import read_omi
from psyattr.data.splits import half_split
from psyattr.features import pool5_features
from psyattr.models import build_base_model
from psyattr.models.loading import load_model
from psyattr.models.precision import dtype_policy, resolve_precision
from psyattr.models.regressor import build_attribute_regressor
from psyattr.train import TrainConfig, _compile, feature_dataset, feature_model, head_model


class EpochTimer:
    """Collects the wall time of each epoch."""

    def __init__(self):
        import keras

        class _Callback(keras.callbacks.Callback):
            def on_epoch_begin(cb, epoch, logs=None):
                cb.start = time.perf_counter()

            def on_epoch_end(cb, epoch, logs=None):
                self.times.append(time.perf_counter() - cb.start)

        self.times: list[float] = []
        self.callback = _Callback()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=None, help="base net spec (default: the age net with random weights)")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    data = read_omi(Path(os.environ["PSYATTR_DATA_DIR"]) / "omi")
    train_index, _ = half_split(len(data), 0)
    targets = data.normalised("happy")[train_index][:, None].astype(np.float32)
    images, _ = decode_images([data.paths[i] for i in train_index], 256, progress=False)
    base = load_model(args.base) if args.base else build_base_model("age")
    config = TrainConfig("age", "dense", ["happy"])
    make = lambda mode: build_attribute_regressor(base, ["happy"], [data.scale], mode, [float(targets.mean())])  # noqa: E731

    regressor = make("dense")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:  # a cold cache: the one-off cost is measured
        center, mirrored = pool5_features(feature_model(regressor), images, cache)
    feature_seconds = time.perf_counter() - start
    head = head_model(regressor)
    _compile(head, config, jit_compile=True)  # as psyattr train compiles it
    dense_timer = EpochTimer()
    head.fit(feature_dataset(center, mirrored, targets, 32, 0), epochs=args.epochs + 1, verbose=0, shuffle=False,
             callbacks=[dense_timer.callback])

    with dtype_policy(resolve_precision("auto")):
        full = make("full")
    _compile(full, config)
    full_timer = EpochTimer()
    full.fit(train_dataset(images, targets, 32, 0), steps_per_epoch=math.ceil(len(images) / 32),
             epochs=args.epochs + 1, verbose=0, shuffle=False, callbacks=[full_timer.callback])

    dense = statistics.median(dense_timer.times[1:])
    full_epoch = statistics.median(full_timer.times[1:])
    print(f"OMI train half: {len(images)} faces, each seen once per epoch: dense mode as cached features (mirrored "
          "at random), full mode as images (random crops, mirrored at random)")
    print(f"cached features, computed once: {feature_seconds:.1f} s")
    print(f"dense-mode epoch (cached features): {dense:.2f} s")
    print(f"full-mode epoch (whole net, {resolve_precision('auto')}): {full_epoch:.2f} s")
    print(f"full / dense epoch time: {full_epoch / dense:.1f}x")


if __name__ == "__main__":
    main()
