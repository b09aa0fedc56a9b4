#!/usr/bin/env python
"""What the Ray engine costs: images/s of `explain` on the same OMI faces, locally and on a local Ray cluster.

Timed on the same `--images` faces (default 256) with the age preset, alpha2beta1 and XLA, batch 16:
- local engine: `psyattr explain` as it runs in one process (`explain_files`: PNG, .npy and .json per image);
- in process, no Ray: the Ray actor's own work (`BatchWorker`: frame, explain, one Parquet part per batch);
- Ray, 1 worker with 2 threads, and 2 workers with 1 thread each, on `ray.init(num_cpus=2)`.
Each is reported as wall time from the start (model load, actor start, XLA compile included) and as steady
images/s after the first batch; the overhead per image is Ray's wall time minus the other's, over the images.
The Ray outputs are checked against the local engine's (scores to 1e-5 relative).

Then multi-worker training: `psyattr train --mode full` on `--train-faces` OMI faces (their 50/50 split) for 2
epochs, on one worker with 2 threads and on two loopback workers (TF_CONFIG) with 1 thread each; the epoch
time is the time between the two epochs' checkpoints (start-up, framing and evaluation left out). Usage:

    python scripts/bench_scale.py [--images 256] [--train-faces 256] [--part explain|training|all]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("PSYATTR_DATA_DIR", "../shared/data")) / "omi" / "images_256"
BATCH = 16


def report(name: str, started: float, writes: list[tuple[float, int]], total: int) -> dict:
    """Wall time from the start to the last write, and steady images/s between the first and the last write.

    Steady rates come from the outputs' own modification times (a Parquet part per batch, a .json per image),
    so that the driver's buffering of Ray's results does not flatter or hurt them.
    """
    writes = sorted(writes)
    wall = writes[-1][0] - started
    first_batch = next(i for i, _ in enumerate(writes) if sum(n for _, n in writes[:i + 1]) >= BATCH)
    after = sum(n for _, n in writes[first_batch + 1:])
    steady = after / (writes[-1][0] - writes[first_batch][0]) if after else float("nan")
    print(f"{name:36s} wall {wall:6.1f} s  ({total / wall:5.2f} img/s)   steady {steady:5.2f} img/s", flush=True)
    return {"wall": wall, "steady": steady}


def part_writes(out: Path) -> list[tuple[float, int]]:
    import pyarrow.parquet as pq

    return [(p.stat().st_mtime, pq.read_metadata(p).num_rows) for p in out.glob("part-*.parquet")]


def local_engine(paths: list[Path], out: Path) -> dict:
    from psyattr.explain import explain_files
    from psyattr.faces.framing import get_framing
    from psyattr.lrp import LRPExplainer
    from psyattr.models.loading import load_model

    started = time.time()
    explainer = LRPExplainer(load_model("age"), "alpha2beta1", jit_compile=True)
    explain_files(explainer, paths, out, get_framing("utkface"), None, BATCH, progress=False)
    return report("local engine (psyattr explain)", started, [(f.stat().st_mtime, 1) for f in out.glob("*.json")],
                  len(paths))


def in_process(paths: list[Path], out: Path) -> dict:
    from psyattr.scale import results
    from psyattr.scale.worker import BatchJob, BatchWorker

    started = time.time()
    job = BatchJob("explain", "age", str(out), threads=2)
    results.open_results(out, job.record())
    worker = BatchWorker(job)
    for start in range(0, len(paths), BATCH):
        worker({"paths": np.array([[str(p) for p in paths[start:start + BATCH]]], dtype=object)})
    return report("in process, no Ray (BatchWorker)", started, part_writes(out), len(paths))


def on_ray(paths: list[Path], out: Path, workers: int, threads: int) -> dict:
    from psyattr.scale import ray_engine
    from psyattr.scale.worker import BatchJob

    started = time.time()
    job = BatchJob("explain", "age", str(out), threads=threads)
    ray_engine.run_batch(job, [str(p) for p in paths], workers=workers, batch_size=BATCH, progress=False)
    return report(f"Ray, {workers} worker(s) x {threads} thread(s)", started, part_writes(out), len(paths))


def check_equal(local_out: Path, ray_out: Path) -> float:
    from psyattr.scale import read_results

    rows = {r["path"]: r for r in read_results(ray_out, ["path", "score"]).to_pylist()}
    worst = 0.0
    for record_file in local_out.glob("*.json"):
        record = json.loads(record_file.read_text())
        ray_score = rows[record["image"]]["score"]
        worst = max(worst, abs(ray_score - record["score"]) / max(abs(record["score"]), 1e-12))
    return worst


def training(faces: int, work: Path) -> None:
    import csv
    import socket
    import subprocess
    import sys

    from psyattr.data.rated import read_omi

    omi = read_omi(DATA.parent)
    ratings = work / "ratings.csv"
    with open(ratings, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "happy"])
        for i in range(faces):
            writer.writerow([str(Path(omi.paths[i]).resolve()), omi.ratings["happy"][i]])
    args = [sys.executable, "-m", "psyattr", "train", "--base", "age", "--mode", "full", "--attribute", "happy",
            "--data", f"csv:{ratings}", "--scale", "0,100", "--epochs", "2", "--batch-size", "32", "--no-progress",
            "--cache-dir", str(work / "cache")]
    print(f"\npsyattr train --mode full, {faces} OMI faces ({faces // 2} train), batch 32, 2 epochs, default precision")
    epoch = {}
    for workers in (1, 2):
        out = work / f"train_{workers}"
        sockets = [socket.socket() for _ in range(workers)]
        for s in sockets:
            s.bind(("localhost", 0))
        cluster = [f"localhost:{s.getsockname()[1]}" for s in sockets]
        for s in sockets:
            s.close()
        started = time.time()
        processes = []
        for index in range(workers):
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_NUM_INTRAOP_THREADS": str(2 // workers),
                   "TF_NUM_INTEROP_THREADS": "1"}
            if workers > 1:
                env["TF_CONFIG"] = json.dumps({"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}})
            processes.append(subprocess.Popen([*args, "--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.PIPE, text=True))
        for process in processes:
            _, err = process.communicate()
            if process.returncode:
                raise SystemExit(f"training on {workers} worker(s) failed:\n{err[-2000:]}")
        wall = time.time() - started
        stamps = [(out / "checkpoints" / f"epoch_{k:03d}.keras").stat().st_mtime for k in (1, 2)]
        epoch[workers] = stamps[1] - stamps[0]
        print(f"{workers} worker(s) x {2 // workers} thread(s): epoch {epoch[workers]:6.1f} s "
              f"({faces // 2 / epoch[workers]:5.1f} faces/s), whole run {wall:6.1f} s", flush=True)
    print(f"2 workers / 1 worker: {epoch[1] / epoch[2]:.2f}x the training speed on the same {os.cpu_count()} CPUs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--train-faces", type=int, default=256)
    parser.add_argument("--part", choices=["explain", "training", "all"], default="all")
    args = parser.parse_args()
    paths = [DATA / f"{i}.jpg" for i in range(1, args.images + 1)]
    work = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    try:
        if args.part in ("explain", "all"):
            explaining(paths, work)
        if args.part in ("training", "all"):
            training(args.train_faces, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def explaining(paths: list[Path], work: Path) -> None:
    from psyattr.scale import ray_engine

    print(f"{len(paths)} OMI faces, age preset, alpha2beta1 with XLA, batch {BATCH}, {os.cpu_count()} CPUs")
    local = local_engine(paths, work / "local")
    worker = in_process(paths, work / "worker")
    ray_engine.connect(num_cpus=2)
    runs = {(1, 2): on_ray(paths, work / "ray_1x2", 1, 2), (2, 1): on_ray(paths, work / "ray_2x1", 2, 1)}
    for (workers, threads), run in runs.items():
        for name, base in (("local engine", local), ("BatchWorker in process", worker)):
            print(f"Ray {workers}x{threads} / {name}: images/s {base['wall'] / run['wall']:.2f}x over the whole "
                  f"job, {run['steady'] / base['steady']:.2f}x steady; overhead "
                  f"{1000 * (run['wall'] - base['wall']) / len(paths):+.1f} ms per image")
    print(f"largest relative score difference, Ray 2x1 vs local engine: {check_equal(work / 'local', work / 'ray_2x1'):.2e}")
    size = sum(f.stat().st_size for f in (work / "ray_2x1").glob("part-*.parquet"))
    local_size = sum(f.stat().st_size for f in (work / "local").iterdir())
    print(f"output per image: Parquet {size / len(paths) / 1e3:.0f} kB, "
          f"local engine files {local_size / len(paths) / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
