"""Multi-worker training: two workers on loopback train what one does; a lost worker; a worker left alone."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from psyattr.distributed import DistributedError, join_cluster, read_tf_config


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]}, "task": {"type": "worker", "index": index}})


def _psyattr(args: list, env: dict | None = None) -> subprocess.Popen:
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    environment.pop("TF_CONFIG", None)
    environment.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "psyattr", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=environment)


def _one_and_two_workers(args: list, out: Path) -> tuple[str, list[str]]:
    """Run `args` on one worker into out/one, then on two loopback workers into out/two; return their outputs."""
    single = _psyattr([*args, "--out", out / "one"])
    one_output, _ = single.communicate(timeout=600)
    assert single.returncode == 0, one_output
    ports = _free_ports(2)
    workers = [_psyattr([*args, "--out", out / "two"], {"TF_CONFIG": _tf_config(ports, k)}) for k in (1, 0)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output
    return one_output, outputs[::-1]


def _weights(path: Path) -> dict[str, list[np.ndarray]]:
    from psyattr.models.loading import load_model

    return {layer.name: layer.get_weights() for layer in load_model(path).layers if layer.weights}


def _assert_same_weights(one: Path, two: Path, rtol: float) -> None:
    first, second = _weights(one), _weights(two)
    assert first.keys() == second.keys()
    for name in first:
        # Measured against the layer's largest weight, kernel and bias together: biases start at zero and stay
        # within 1e-6 of it in a short run, where float32 noise alone is 1e-3 of their own largest value.
        scale = max(float(np.abs(a).max()) for a in first[name])
        worst = max(float(np.abs(a - b).max()) for a, b in zip(first[name], second[name])) / scale
        assert worst <= rtol, f"{name}: two workers differ from one by {worst:.2e} of its largest weight"


@pytest.fixture(scope="module")
def rated_faces(tmp_path_factory, omi_dir) -> Path:
    """16 OMI faces with their happy ratings (0..100): 8 train, 8 test."""
    from psyattr.data.rated import read_omi

    omi = read_omi(omi_dir)
    path = tmp_path_factory.mktemp("rated") / "ratings.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "happy"])
        for i in range(16):
            writer.writerow([str(Path(omi.paths[i]).resolve()), omi.ratings["happy"][i]])
    return path


def _train_args(rated_faces: Path, cache: Path, epochs: int, batch: int) -> list:
    return ["train", "--base", "age", "--mode", "full", "--attribute", "happy", "--data", f"csv:{rated_faces}",
            "--scale", "0,100", "--epochs", epochs, "--batch-size", batch, "--precision", "float32", "--no-progress",
            "--warmup-epochs", 2, "--cache-dir", cache]


def test_tf_config_that_names_no_cluster_is_refused_before_anything_starts(monkeypatch, tmp_path):
    for text, expected in (("{oops", "is not a cluster description"),
                           ('{"cluster": {"ps": ["a:1"], "worker": ["b:1"]}, "task": {"type": "worker", "index": 0}}',
                            "names ps tasks"),
                           ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}',
                            "task worker 3 is not in its cluster")):
        with pytest.raises(DistributedError, match=expected):
            read_tf_config({"TF_CONFIG": text})
    assert read_tf_config({}) is None
    assert read_tf_config({"TF_CONFIG": '{"cluster": {"chief": ["c:1"], "worker": ["w:1", "w:2"]}, '
                                        '"task": {"type": "worker", "index": 1}}'}) == (["c:1", "w:1", "w:2"], 2, 1)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert join_cluster() is None  # one worker: the plain path
    with pytest.raises(DistributedError, match="--distributed needs TF_CONFIG"):
        join_cluster(distributed=True)
    (tmp_path / "ratings.csv").write_text("image,happy\n")
    result = _psyattr(["train", "--base", "age", "--mode", "full", "--attribute", "happy", "--data",
                       f"csv:{tmp_path / 'ratings.csv'}", "--out", tmp_path / "run", "--distributed"])
    output, _ = result.communicate(timeout=120)
    assert result.returncode != 0 and "--distributed needs TF_CONFIG" in output and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_two_workers_fine_tune_what_one_worker_does(tmp_path, rated_faces):
    """Full mode, 2 epochs of 2 global batches of 4 faces: every weight as one worker trains it, to 1e-4."""
    _, (chief, other) = _one_and_two_workers([*_train_args(rated_faces, tmp_path / "cache", 2, 4), "--dropout", "0"],
                                             tmp_path)
    assert "worker 1 of 2 done: worker 0 wrote the run" in other and "model:" in chief
    _assert_same_weights(tmp_path / "one" / "model.keras", tmp_path / "two" / "model.keras", 1e-4)
    from psyattr.models.loading import load_model

    trained = _weights(tmp_path / "two" / "model.keras")
    assert not np.allclose(trained["conv1"][0], load_model("age").get_layer("conv1").get_weights()[0])  # it trained
    one, two = (json.loads((tmp_path / k / "state.json").read_text())["history"] for k in ("one", "two"))
    assert [h["epoch"] for h in two] == [1, 2]
    for a, b in zip(one, two):
        assert b["test_mae"] == pytest.approx(a["test_mae"], rel=1e-4)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    # The chief wrote what a one-worker run writes; the other worker wrote nothing of its own.
    names = lambda run: sorted(p.relative_to(run).as_posix() for p in run.rglob("*"))  # noqa: E731
    assert names(tmp_path / "two") == names(tmp_path / "one")


@pytest.mark.slow
def test_two_workers_pretrain_what_one_worker_does(tmp_path, utkface_dir):
    """30 UTKFace faces, augmented, 2 epochs of 3 global batches: the same base net as one worker, to 1e-4."""
    args = ["pretrain", "--task", "gender", "--data", f"utkface:{utkface_dir}", "--limit", 30, "--epochs", 2,
            "--batch-size", 8, "--dropout", 0, "--precision", "float32", "--no-progress", "--cache-dir",
            tmp_path / "cache"]
    _, (chief, other) = _one_and_two_workers(args, tmp_path)
    assert "worker 1 of 2 done" in other
    _assert_same_weights(tmp_path / "one" / "model.keras", tmp_path / "two" / "model.keras", 1e-4)
    one, two = (json.loads((tmp_path / k / "metrics.json").read_text()) for k in ("one", "two"))
    assert two["test"] == one["test"]
    history = json.loads((tmp_path / "two" / "state.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2] and all("val_accuracy" in h for h in history)


@pytest.mark.slow
def test_a_lost_worker_stops_the_run_and_resume_finishes_it(tmp_path, rated_faces):
    out = tmp_path / "run"
    args = [*_train_args(rated_faces, tmp_path / "cache", 40, 2), "--warmup-epochs", 0, "--out", out]
    ports = _free_ports(2)
    other = _psyattr(args, {"TF_CONFIG": _tf_config(ports, 1)})
    chief = _psyattr(args, {"TF_CONFIG": _tf_config(ports, 0)})
    deadline = time.monotonic() + 300
    while not (out / "state.json").exists() and time.monotonic() < deadline and chief.poll() is None:
        time.sleep(0.2)
    other.kill()
    other.communicate(timeout=60)
    stopped = time.monotonic()
    output, _ = chief.communicate(timeout=120)
    assert chief.returncode == 1, output
    assert time.monotonic() - stopped < 60
    saved = json.loads((out / "state.json").read_text())["epoch"]
    assert f"worker 0 of 2 lost the others in epoch {saved + 1}" in output, output
    assert f"worker 1 at localhost:{ports[1]}" in output and "start every worker again with --resume" in output
    assert not (out / "model.keras").exists()

    ports = _free_ports(2)
    resumed = [*args[: args.index("--epochs") + 1], saved + 1, *args[args.index("--epochs") + 2:], "--resume"]
    workers = [_psyattr(resumed, {"TF_CONFIG": _tf_config(ports, k)}) for k in (1, 0)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    history = json.loads((out / "state.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(1, saved + 2)) and (out / "model.keras").exists()


def test_a_worker_left_alone_gives_up_naming_the_others(tmp_path, rated_faces):
    ports = _free_ports(2)
    started = time.monotonic()
    alone = _psyattr([*_train_args(rated_faces, tmp_path / "cache", 1, 4), "--out", tmp_path / "run", "--join-timeout",
                      2], {"TF_CONFIG": _tf_config(ports, 0)})
    output, _ = alone.communicate(timeout=120)
    assert alone.returncode != 0 and time.monotonic() - started < 60
    assert f"waiting for localhost:{ports[1]} to join" in output
    assert "not every worker of TF_CONFIG" in output and "joined within 2 s" in output, output
    assert not (tmp_path / "run").exists()
