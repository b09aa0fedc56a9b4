"""`psyattr pretrain` on a tiny real run: checkpoints, a kill and `--resume`, metrics, refusals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from psyattr.cli import cli


@pytest.fixture(scope="module")
def tiny_utkface(tmp_path_factory, utkface_dir):
    """40 real UTKFace images, 20 per gender, in a folder of their own."""
    folder = tmp_path_factory.mktemp("utk") / "images"
    folder.mkdir()
    files = sorted((utkface_dir / "images").glob("*.jpg"))
    for gender in ("0", "1"):
        chosen = [f for f in files if f.name.split("_")[1] == gender][::97][:20]
        for f in chosen:
            shutil.copy(f, folder / f.name)
    return folder


def pretrain_command(data, out, cache, epochs, *extra):
    return [sys.executable, "-m", "psyattr", "pretrain", "--task", "gender", "--data", f"utkface:{data}",
            "--out", str(out), "--epochs", str(epochs), "--batch-size", "4", "--keep-checkpoints", "0",
            "--cache-dir", str(cache), "--no-progress", *extra]


def read_state(run):
    path = run / "state.json"
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except json.JSONDecodeError as err:  # never expected: the file is replaced atomically
        raise AssertionError("state.json was read half-written") from err


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_epochs_without_losing_a_checkpoint(tmp_path, tiny_utkface):
    run, cache, epochs = tmp_path / "run", tmp_path / "cache", 6
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(pretrain_command(tiny_utkface, run, cache, epochs), env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline:
        state = read_state(run)
        if state and state["epoch"] >= 2:
            break
        assert process.poll() is None, process.stdout.read().decode()[-3000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = read_state(run)["epoch"]
    assert 2 <= killed_at < epochs, "the run should have been killed part way"

    refused = subprocess.run(pretrain_command(tiny_utkface, run, cache, epochs), env=env, capture_output=True, text=True)
    assert refused.returncode != 0 and "pass --resume" in refused.stderr

    resumed = subprocess.run(pretrain_command(tiny_utkface, run, cache, epochs, "--resume"), env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = read_state(run)
    assert state["epoch"] == epochs
    assert [row["epoch"] for row in state["history"]] == list(range(1, epochs + 1))
    assert sorted(p.name for p in (run / "checkpoints").glob("*.keras")) == [
        f"epoch_{e:03d}.keras" for e in range(1, epochs + 1)]
    assert not list(run.rglob("*.partial.keras"))
    history_lines = (run / "history.csv").read_text().strip().splitlines()
    assert len(history_lines) == epochs + 1
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0 and metrics["test"]["count"] >= 4
    assert (run / "confusion_matrix.png").stat().st_size > 1000
    assert (run / "model.keras").exists()
    assert any((run / "tensorboard").rglob("events.out.tfevents.*"))

    other_task = CliRunner().invoke(cli, ["pretrain", "--task", "age", "--data", f"utkface:{tiny_utkface}",
                                          "--out", str(run), "--resume", "--cache-dir", str(cache)])
    assert other_task.exit_code != 0
    assert "task 'gender'" in other_task.output and "task 'age'" in other_task.output


def test_missing_data_folder_is_named(tmp_path):
    result = CliRunner().invoke(cli, ["pretrain", "--task", "age", "--data", f"utkface:{tmp_path / 'none'}",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code != 0 and "utkface data folder not found" in result.output


def test_folder_without_labelled_images_stops_before_training(tmp_path):
    (tmp_path / "faces").mkdir()
    (tmp_path / "faces" / "holiday.jpg").write_bytes(b"x")
    result = CliRunner().invoke(cli, ["pretrain", "--task", "age", "--data", f"utkface:{tmp_path / 'faces'}",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code != 0 and "no UTKFace images in" in result.output
    assert not (tmp_path / "run").exists()
