"""Run folders that survive a kill: atomic files, per-epoch checkpoints, a state file, and resuming."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras

STATE_FILE = "state.json"
CHECKPOINT_DIR = "checkpoints"
HISTORY_FILE = "history.csv"


class ResumeError(RuntimeError):
    """A run folder that cannot be resumed (or would be overwritten without --resume)."""


def _umask() -> int:
    try:  # Linux says it without changing it (os.umask would, for a moment, for every thread)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: readers see the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); the finished file gets the permissions the umask gives others.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_model(model: keras.Model, path: str | os.PathLike) -> None:
    """Save a `.keras` file beside `path` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_state(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run's state (identity, last completed epoch, checkpoint, history), or None for a new run."""
    path = Path(run_dir) / STATE_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError) as err:
        raise ResumeError(f"{path} is unreadable ({err}); delete the run folder or pick another --out") from err


def _describe(identity: Mapping[str, Any]) -> str:
    return ", ".join(f"{key} {value!r}" for key, value in sorted(identity.items()))


def prepare_run_dir(run_dir: str | os.PathLike, identity: Mapping[str, Any], resume: bool) -> dict[str, Any] | None:
    """Check that `run_dir` is new (or, with `resume`, holds a run of the same identity); return its state."""
    run_dir = Path(run_dir)
    state = read_state(run_dir)
    if state is None:
        if resume and run_dir.exists() and any(run_dir.iterdir()):
            raise ResumeError(f"nothing to resume in {run_dir}: it has no {STATE_FILE} (no epoch finished yet)")
        run_dir.mkdir(parents=True, exist_ok=True)
        return None
    if not resume:
        raise ResumeError(
            f"{run_dir} already holds a run ({_describe(state['identity'])}) at epoch {state['epoch']}: "
            "pass --resume to continue it, or choose another output folder"
        )
    if dict(state["identity"]) != dict(identity):
        raise ResumeError(
            f"cannot resume: the checkpoint in {run_dir} is from a run with {_describe(state['identity'])}, "
            f"but this run has {_describe(identity)}"
        )
    checkpoint = run_dir / state["checkpoint"]
    if not checkpoint.exists():
        raise ResumeError(f"cannot resume: {checkpoint} named in {run_dir / STATE_FILE} is missing")
    return state


def write_history_csv(path: str | os.PathLike, history: list[Mapping[str, Any]]) -> None:
    """Write per-epoch records as CSV (atomically)."""
    columns: list[str] = []
    for row in history:
        columns.extend(key for key in row if key not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buffer.getvalue())


def checkpoint_name(epoch: int) -> str:
    """The checkpoint file of `epoch` (1-based), relative to the run folder."""
    return f"{CHECKPOINT_DIR}/epoch_{epoch:03d}.keras"


def best_epoch(history: list[Mapping[str, Any]], monitor: str) -> int | None:
    """The epoch with the lowest `monitor` (the first of ties), or None when no epoch recorded it."""
    scored = [(float(row[monitor]), int(row["epoch"])) for row in history if row.get(monitor) is not None]
    return min(scored)[1] if scored else None


class EpochCheckpoint(keras.callbacks.Callback):
    """After every epoch: save the model with its optimizer, then the state and history that name it.

    With `monitor` (a metric to minimise, e.g. the validation MAE), the best epoch's checkpoint is never pruned,
    so the run can end on its best epoch rather than its last.
    """

    def __init__(self, run_dir: str | os.PathLike, identity: Mapping[str, Any], history: list[dict], keep: int = 0,
                 monitor: str | None = None):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.identity = dict(identity)
        self.history = list(history)
        self.keep = keep
        self.monitor = monitor

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        done = epoch + 1
        name = checkpoint_name(done)
        atomic_save_model(self.model, self.run_dir / name)
        row = {"epoch": done, "learning_rate": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))}
        row.update({key: float(value) for key, value in (logs or {}).items() if key != "learning_rate"})
        self.history = [r for r in self.history if r["epoch"] < done] + [row]
        # The state file is written last: it only ever names a checkpoint that is complete on disk.
        state = {"identity": self.identity, "epoch": done, "checkpoint": name, "history": self.history}
        atomic_write_text(self.run_dir / STATE_FILE, json.dumps(state, indent=2))
        write_history_csv(self.run_dir / HISTORY_FILE, self.history)
        self._prune(done)

    def _prune(self, done: int) -> None:
        if self.keep <= 0:
            return
        best = best_epoch(self.history, self.monitor) if self.monitor else None
        for old in range(1, done - self.keep + 1):
            if old != best:
                (self.run_dir / checkpoint_name(old)).unlink(missing_ok=True)


class EpochProgress(keras.callbacks.Callback):
    """One progress bar for a whole training run: epochs done (and the batches of the current one), latest metrics."""

    def __init__(self, epochs: int, initial_epoch: int, description: str, steps_per_epoch: int | None = None,
                 shown: tuple[str, ...] = ("train_mae", "test_mae")):
        super().__init__()
        from tqdm.auto import tqdm

        self.steps = steps_per_epoch or 1
        self.shown = shown
        self.by_batch = steps_per_epoch is not None
        self.bar = tqdm(total=epochs * self.steps, initial=initial_epoch * self.steps, desc=description,
                        unit="batch" if self.by_batch else "epoch")
        self.epoch = initial_epoch

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self.epoch = epoch
        self.bar.n = epoch * self.steps  # a batch count is exact again at each epoch's start
        self.bar.refresh()

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        if self.by_batch:
            self.bar.update(1)

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        logs = logs or {}
        postfix = {"epoch": epoch + 1, **{k: f"{float(logs[k]):.4f}" for k in self.shown if k in logs}}
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.n = (epoch + 1) * self.steps
        self.bar.refresh()

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        self.bar.close()
