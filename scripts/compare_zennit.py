#!/usr/bin/env python
"""Compare psyattr's LRP with zennit's (chr5tphr/zennit) on the Levi-Hassner age net: agreement and speed.

zennit runs in an interpreter of its own, never in the project's venv (torch is no dependency of psyattr):

    python3 -m venv /work/zennit-venv && /work/zennit-venv/bin/pip install torch==2.13.0 zennit numpy
    PSYATTR_DATA_DIR=/work/shared/data PSYATTR_ZENNIT_PYTHON=/work/zennit-venv/bin/python \\
        python scripts/compare_zennit.py [--images 16] [--rounds 7] [--no-speed]

Both nets (the shipped `utkface` preset and random weights) are written with the images to a temporary
`.npz`, rebuilt in PyTorch by scripts/zennit_worker.py and explained there with zennit's composites. The
heatmaps (relevance summed over colour channels) are compared per image: max |psyattr - zennit| / max
|zennit|, and their correlation; zennit also runs in float64, the yardstick for float32 rounding (psyattr
against it, and zennit's own float32 run against it). psyattr shares a max-pooling window's relevance
between tied winners, zennit (the PyTorch gradient) hands it to one of them, so images with a tie (a
pooling window whose positive maximum occurs twice, e.g. in saturated regions) are reported apart; the
same faces are also compared with sub-grey-level noise added, which breaks exact ties (near-ties that
float32 rounding may order either way remain). Speed: median ms/image over interleaved rounds (every
method once per round, warm-up excluded), zennit with torch on the same number of threads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from psyattr.lrp import LRPExplainer
from psyattr.lrp.rules import DEFAULT_STABILIZER
from psyattr.models import build_base_model
from psyattr.models.layers import CaffeLRN, CaffePreprocess
from psyattr.models.weights import randomize_weights

WORKER = Path(__file__).with_name("zennit_worker.py")
ZENNIT_PYTHON_ENV = "PSYATTR_ZENNIT_PYTHON"
COMPOSITES = ("alpha2beta1", "epsilon", "epsilon_alpha2beta1", "epsilon_gamma_box", "alpha1beta0", "epsilon_plus",
              "epsilon_plus_flat", "epsilon_alpha2beta1_flat")
SPEED_COMPOSITES = ("alpha2beta1", "epsilon", "epsilon_alpha2beta1", "epsilon_gamma_box")
NETS = ("utkface", "random")


def model_arrays(model: keras.Model) -> dict[str, np.ndarray]:
    """What the worker needs to rebuild `model`: Keras weights, preprocessing means, LRN settings, pool5's shape."""
    arrays = {f"weights/{layer.name}/{i}": np.asarray(w, np.float32)
              for layer in model.layers for i, w in enumerate(layer.get_weights())}
    (preprocess,) = [layer for layer in model.layers if isinstance(layer, CaffePreprocess)]
    lrns = {(lrn.local_size, lrn.alpha, lrn.beta, lrn.k) for lrn in model.layers if isinstance(lrn, CaffeLRN)}
    if len(lrns) != 1:
        raise ValueError(f"expected one LRN setting, got {lrns}")
    arrays["meta/bgr_mean"] = np.array(preprocess.bgr_mean, np.float32)
    arrays["meta/lrn"] = np.array(lrns.pop(), np.float64)
    arrays["meta/pool5_shape"] = np.array(model.get_layer("pool5").output.shape[1:], np.int64)
    arrays["meta/stabilizer"] = np.array(DEFAULT_STABILIZER, np.float64)
    return arrays


class ZennitWorker:
    """scripts/zennit_worker.py running in the zennit interpreter, holding one net and the image batches."""

    def __init__(self, python: str, model: keras.Model, batches: dict[str, np.ndarray], targets: np.ndarray,
                 folder: str | os.PathLike, threads: int = 2):
        self.folder = Path(folder)
        path = Path(tempfile.mkstemp(".npz", "zennit_", self.folder)[1])
        np.savez(path, **model_arrays(model), **{f"images/{k}": v for k, v in batches.items()}, targets=targets)
        self.process = subprocess.Popen([python, str(WORKER), str(path), str(threads)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        self.info = self._reply()

    def _reply(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the zennit worker exited (status {self.process.wait()}); see its stderr above")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"zennit worker: {reply['error']}")
        return reply

    def request(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._reply()

    def logits(self, images: str) -> np.ndarray:
        """The fc8 logits of batch `images`."""
        return np.load(self.request(op="logits", images=images, out=str(self.folder / "logits.npy"))["out"])

    def explain(self, composite: str, images: str, dtype: str = "float32") -> np.ndarray:
        """zennit's relevance (N, H, W, C) of each image's target logit."""
        out = str(self.folder / "relevance.npy")
        return np.load(self.request(op="explain", composite=composite, images=images, out=out, dtype=dtype)["out"])

    def time(self, composite: str, images: str) -> float:
        """Milliseconds one explanation of batch `images` takes inside the worker."""
        return self.request(op="time", composite=composite, images=images)["ms"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)

    def __enter__(self) -> ZennitWorker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def pool_ties(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """Per image, how many max-pooling windows have a positive maximum that occurs more than once.

    (Ties at 0 do not matter: an input of value 0 gets no relevance from the next layer's rule.)
    """
    pools = [layer for layer in model.layers if isinstance(layer, keras.layers.MaxPooling2D)]
    inputs = keras.Model(model.inputs, [pool.input for pool in pools])([images], training=False)
    counts = np.zeros(len(images), np.int64)
    for pool, a in zip(pools, inputs):
        (ph, pw), (sh, sw) = pool.pool_size, pool.strides
        # Zero padding cannot tie with a positive maximum; TF's SAME split is the pooling layer's.
        patches = tf.image.extract_patches(a, [1, ph, pw, 1], [1, sh, sw, 1], [1, 1, 1, 1], pool.padding.upper())
        windows = tf.reshape(patches, [*patches.shape[:3], ph * pw, a.shape[-1]]).numpy()
        winners = windows.max(axis=3, keepdims=True)
        tied = ((windows == winners).sum(axis=3) > 1) & (winners[:, :, :, 0] > 0)
        counts += tied.reshape(len(images), -1).sum(axis=1)
    return counts


def break_ties(images: np.ndarray, size: float = 0.5, seed: int = 0) -> np.ndarray:
    """`images` moved by up to `size` grey levels towards mid-grey (so that they stay in 0..255)."""
    noise = np.random.default_rng(seed).uniform(0.0, size, images.shape).astype(np.float32)
    return images + np.where(images > 127.5, -noise, noise)


def heatmap_agreement(ours: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: max |ours - reference| / max |reference| of the channel-summed heatmaps, and their correlation."""
    a = ours.sum(axis=-1, dtype=np.float64).reshape(len(ours), -1)
    b = reference.sum(axis=-1, dtype=np.float64).reshape(len(reference), -1)
    error = np.abs(a - b).max(axis=1) / np.abs(b).max(axis=1)
    correlation = np.array([np.corrcoef(x, y)[0, 1] for x, y in zip(a, b)])
    return error, correlation


def build_net(weights: str) -> keras.Model:
    """The age net with the shipped preset `weights`, or with random weights (biases included) for "random"."""
    if weights == "random":
        return randomize_weights(build_base_model("age"), seed=0)
    return build_base_model("age", weights=weights)


def agreement(model: keras.Model, worker: ZennitWorker, composite: str, key: str, images: np.ndarray,
              targets: np.ndarray) -> dict[str, np.ndarray]:
    """Per image: psyattr (XLA) against zennit in float32 (`error`, `correlation`) and in float64 (`error64`),
    and zennit's own float32 rounding (`noise`: float32 against float64), all as heatmap_agreement measures."""
    ours = LRPExplainer(model, composite, jit_compile=True)(images, targets).relevance
    zennit32, zennit64 = worker.explain(composite, key), worker.explain(composite, key, "float64")
    error, correlation = heatmap_agreement(ours, zennit32)
    return {"error": error, "correlation": correlation, "error64": heatmap_agreement(ours, zennit64)[0],
            "noise": heatmap_agreement(zennit32, zennit64)[0]}


def within_float32_noise(found: dict[str, np.ndarray], floor: float = 1e-5) -> np.ndarray:
    """Per image, whether psyattr misses zennit's float64 heatmap by no more than zennit's own float32 run does
    (x3), or by `floor` of the heatmap's largest value, whichever is larger."""
    return found["error64"] <= np.maximum(floor, 3 * found["noise"])


def compare(model: keras.Model, worker: ZennitWorker, batches: dict[str, np.ndarray], targets: np.ndarray,
            composites) -> None:
    """Print the logit check, the ties and each composite's agreement on every batch."""
    for key, images in batches.items():
        ours = LRPExplainer(model, "gradient").scores(images)
        theirs = worker.logits(key)
        print(f"  {key}: fc8 logits max |psyattr - torch| / max |logit| = "
              f"{np.abs(ours - theirs).max() / np.abs(ours).max():.1e}")
    ties = {key: pool_ties(model, images) for key, images in batches.items()}
    for key, count in ties.items():
        print(f"  {key}: {int((count > 0).sum())} of {len(count)} images have tied pooling windows "
              f"(per image: {count.tolist()})")
    print("\n  err: max |psyattr - zennit| / max |zennit| of the heatmap; f64: psyattr against zennit in float64; "
          "zennit f32: zennit's float32 against its float64;\n  beyond: images where f64 > max(1e-5, 3 x zennit f32)")
    print(f"  {'':33s} | {'tie-free images':^63s} | {'all images':^24s}")
    print(f"  {'composite':26s} {'batch':6s} | {'n':>2s} {'median err':>10s} {'max err':>8s} {'min corr':>10s} "
          f"{'f64 max':>8s} {'zennit f32':>10s} {'beyond':>6s} | {'n':>2s} {'max err':>8s} {'min corr':>10s}")
    for composite in composites:
        for key, images in batches.items():
            found = agreement(model, worker, composite, key, images, targets)
            free = ties[key] == 0
            row = f"  {composite:26s} {key:6s} | {free.sum():2d} "
            if free.any():
                row += (f"{np.median(found['error'][free]):10.1e} {found['error'][free].max():8.1e} "
                        f"{found['correlation'][free].min():10.8f} {found['error64'][free].max():8.1e} "
                        f"{found['noise'][free].max():10.1e} {(~within_float32_noise(found))[free].sum():6d}")
            else:
                row += f"{'':59s}"
            print(f"{row} | {len(images):2d} {found['error'].max():8.1e} {found['correlation'].min():10.8f}")


def time_methods(model: keras.Model, worker: ZennitWorker, images: np.ndarray, key: str, targets: np.ndarray,
                 composites, rounds: int) -> None:
    """Print median ms/image of psyattr (XLA and plain graph), its XLA input gradient and zennit, interleaved."""
    def timed(call):
        start = time.perf_counter()
        call()
        return (time.perf_counter() - start) * 1000

    methods = {"gradient (psyattr XLA)": LRPExplainer(model, "gradient", jit_compile=True)}
    for composite in composites:
        methods[f"{composite} (psyattr XLA)"] = LRPExplainer(model, composite, jit_compile=True)
        methods[f"{composite} (psyattr no XLA)"] = LRPExplainer(model, composite, jit_compile=False)
        methods[f"{composite} (zennit)"] = composite
    calls = {name: (lambda c=method: worker.time(c, key)) if isinstance(method, str)
             else (lambda e=method: timed(lambda: e(images, targets))) for name, method in methods.items()}
    for call in calls.values():  # compile and warm up
        call()
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            times[name].append(call() / len(images))
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"\n  {'method':40s} {'ms/image':>9s}  (batch {len(images)}, median of {rounds} interleaved rounds)")
    for name, value in median.items():
        print(f"  {name:40s} {value:9.1f}")
    print(f"\n  {'composite':26s} {'zennit / psyattr XLA':>21s} {'zennit / psyattr no XLA':>24s}")
    for composite in composites:
        zennit = median[f"{composite} (zennit)"]
        print(f"  {composite:26s} {zennit / median[f'{composite} (psyattr XLA)']:21.2f}"
              f" {zennit / median[f'{composite} (psyattr no XLA)']:24.2f}")
    print(f"  zennit {composites[0]} / psyattr XLA input gradient: "
          f"{median[f'{composites[0]} (zennit)'] / median['gradient (psyattr XLA)']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zennit-python", default=os.environ.get(ZENNIT_PYTHON_ENV),
                        help=f"a Python with torch and zennit (default: ${ZENNIT_PYTHON_ENV})")
    parser.add_argument("--images", type=int, default=16, help="faces in the batch (OMI, from $PSYATTR_DATA_DIR)")
    parser.add_argument("--noise", type=float, default=0.5, help="grey levels of tie-breaking noise")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (TensorFlow uses every core)")
    parser.add_argument("--no-speed", action="store_true", help="only compare the heatmaps")
    args = parser.parse_args()
    if not args.zennit_python:
        parser.error(f"give --zennit-python or set ${ZENNIT_PYTHON_ENV}")

    from benchdata import faces

    images = faces(args.images)
    batches = {"faces": images, "noisy": break_ties(images, args.noise)}
    print(f"{len(images)} faces; 'noisy' adds up to {args.noise} grey levels; TensorFlow {tf.__version__}, "
          f"{os.cpu_count()} CPU threads")
    with tempfile.TemporaryDirectory() as folder:
        for name in NETS:
            model = build_net(name)
            targets = np.argmax(LRPExplainer(model, "gradient").scores(images), axis=1).astype(np.int32)
            with ZennitWorker(args.zennit_python, model, batches, targets, folder, args.threads) as worker:
                print(f"\nage net, {name} weights; targets {targets.tolist()}; zennit worker {worker.info}")
                compare(model, worker, batches, targets, COMPOSITES)
                if name == "utkface" and not args.no_speed:
                    time_methods(model, worker, batches["noisy"], "noisy", targets, SPEED_COMPOSITES, args.rounds)


if __name__ == "__main__":
    main()
