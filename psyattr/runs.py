"""Run folders: one owner for what a training run wrote (config, identity, framing, split, state, metrics, model).

Training writes a run through `Run.start` only after its data has been validated; grid, evaluate, export,
the studies and the preset script read it through `Run.open`. A run's test faces are the ids it wrote in
`split.json` at training time, never a split recomputed elsewhere, so a study of a run always uses the
faces the run did not train on.

Files: `config.json` (what was asked, the framing, the data), `split.json` (ids per part), `state.json`
(identity, last epoch, checkpoint, history; written by `psyattr.checkpoints`), `metrics.json`,
`predictions.csv`, `history.csv`, `model.keras`, `checkpoints/`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from psyattr.checkpoints import STATE_FILE, ResumeError, atomic_write_text, read_state

CONFIG_FILE = "config.json"
SPLIT_FILE = "split.json"
METRICS_FILE = "metrics.json"
MODEL_FILE = "model.keras"
PREDICTIONS_FILE = "predictions.csv"


class RunError(ValueError):
    """A folder that is not the run it should be (not a run, another seed, unfinished)."""


def _differences(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    keys = sorted(set(saved) | set(wanted))
    return "; ".join(f"the run has {key} {_show(saved.get(key))}, this one {key} {_show(wanted.get(key))}"
                     for key in keys if saved.get(key) != wanted.get(key))


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return str(value) if isinstance(value, (int, float, str)) else repr(value)


def check_run_dir(path: str | os.PathLike, identity: Mapping[str, Any], resume: bool) -> dict[str, Any] | None:
    """Check, without writing, that `path` may hold a run of `identity`: new, empty, or (with `resume`) the same run.

    Returns the saved state to resume from (None to start afresh). A folder holding anything but this run is
    refused, so that nothing a user keeps there is ever overwritten.
    """
    path = Path(path)
    state = read_state(path)
    if state is not None:
        if not resume:
            raise ResumeError(f"{path} already holds a run at epoch {state['epoch']}: pass --resume to continue it, "
                              "or choose another output folder")
        if dict(state["identity"]) != dict(identity):
            raise ResumeError(f"cannot resume {path}: it holds another run ({_differences(state['identity'], identity)})")
        if not (path / state["checkpoint"]).exists():
            raise ResumeError(f"cannot resume: {path / state['checkpoint']} named in {path / STATE_FILE} is missing")
        return state
    if not path.exists() or not any(path.iterdir()):
        if resume and path.exists():
            raise ResumeError(f"nothing to resume in {path}: it is empty")
        return None
    config = _read_json(path / CONFIG_FILE) if (path / CONFIG_FILE).exists() else None
    if config is not None and config.get("identity") == dict(identity):
        # Started but killed before its first epoch was saved: it starts again, with or without --resume.
        return None
    entries = sorted(p.name for p in path.iterdir())
    shown = ", ".join(entries[:5]) + (" ..." if len(entries) > 5 else "")
    if config is not None:
        raise ResumeError(f"{path} holds an unfinished run of another kind "
                          f"({_differences(config.get('identity', {}), identity)}): choose another output folder")
    raise ResumeError(f"{path} is not empty and holds no psyattr run (it has {shown}): choose another output folder "
                      "or empty this one; psyattr never writes into a folder it did not make")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise RunError(f"{path} is unreadable ({err}): the run folder is damaged") from err


class Run:
    """A run folder: `Run.open(path)` to read one, `Run.start(path, config)` to begin writing one."""

    def __init__(self, path: str | os.PathLike, config: dict[str, Any]):
        self.path = Path(path)
        self.config = config

    @classmethod
    def open(cls, path: str | os.PathLike) -> Run:
        """The run in `path`; RunError when it is not a psyattr run folder."""
        path = Path(path)
        if path.is_file() and path.suffix == ".keras":
            path = path.parent
        if not (path / CONFIG_FILE).is_file():
            raise RunError(f"{path} is not a psyattr run folder (it has no {CONFIG_FILE})")
        return cls(path, _read_json(path / CONFIG_FILE))

    @classmethod
    def is_run(cls, path: str | os.PathLike) -> bool:
        """Whether `path` (a folder, or a `.keras` file in one) is a run folder."""
        path = Path(path)
        return ((path.parent if path.suffix == ".keras" else path) / CONFIG_FILE).is_file()

    @classmethod
    def start(cls, path: str | os.PathLike, config: dict[str, Any], identity: Mapping[str, Any]) -> Run:
        """Write `config.json` (with the run's `identity`) into `path`, which `check_run_dir` has cleared."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        record = {**config, "identity": dict(identity)}
        atomic_write_text(path / CONFIG_FILE, json.dumps(record, indent=2))
        return cls(path, record)

    # ---- what the run is --------------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        """"train" (an attribute regressor), "pretrain" (a base net) or "cv" (a cross-validation of folds)."""
        return self.config.get("kind") or self.config.get("identity", {}).get("kind") or \
            ("pretrain" if "task" in self.config else "train")

    @property
    def name(self) -> str:
        """The folder's name."""
        return self.path.name

    @property
    def seed(self) -> int:
        """The seed of the run's split and training."""
        return int(self.config.get("seed", 0))

    @property
    def framing(self) -> dict | None:
        """The framing record the run trained on (None for runs made before framings were recorded)."""
        return self.config.get("framing")

    @property
    def data_spec(self) -> dict[str, Any]:
        """Where the run's data is: {"kind", "path", ...} as given on the command line."""
        return dict(self.config.get("data", {}))

    def check_seed(self, seed: int | None) -> None:
        """Refuse an explicit `seed` that is not the run's: its split would mix training and test faces."""
        if seed is not None and int(seed) != self.seed:
            raise RunError(f"{self.path} was trained with --seed {self.seed}, not {seed}: its test faces come from its "
                           f"own split (seed {self.seed}); leave out --seed, or give --seed {self.seed}")

    # ---- what the run wrote ----------------------------------------------------------------------------

    @property
    def state(self) -> dict[str, Any] | None:
        """The checkpoint state (identity, epoch, history), or None before the first epoch."""
        return read_state(self.path)

    @property
    def history(self) -> list[dict[str, Any]]:
        """Per-epoch records (learning rate, losses, train/test MAE)."""
        state = self.state
        return list(state["history"]) if state else []

    @property
    def split(self) -> dict[str, list[str]]:
        """The ids (or, for pretraining, the image paths) of each part: train, test, and validation if any."""
        path = self.path / SPLIT_FILE
        if not path.exists():
            raise RunError(f"{self.path} has no {SPLIT_FILE}: it was made before runs recorded their split; train it "
                           "again, or give the studies --seed to split its data as it was split then")
        return {part: [str(i) for i in ids] for part, ids in _read_json(path).items()}

    @property
    def test_ids(self) -> list[str]:
        """The ids of the faces the run held out for testing."""
        return self.split["test"]

    def write_split(self, parts: Mapping[str, list[str]]) -> None:
        """Record the ids of each part of the split (atomically)."""
        atomic_write_text(self.path / SPLIT_FILE, json.dumps({k: list(map(str, v)) for k, v in parts.items()},
                                                             indent=1))

    @property
    def model_file(self) -> Path:
        """The trained model's file (present once training has finished)."""
        return self.path / MODEL_FILE

    @property
    def metrics(self) -> dict[str, Any] | None:
        """The test metrics, or None while the run is unfinished."""
        path = self.path / METRICS_FILE
        return _read_json(path) if path.exists() else None

    @property
    def finished(self) -> bool:
        """Whether the run saved its model and its metrics (a cross-validation: its pooled metrics)."""
        if self.kind == "cv":
            return (self.path / METRICS_FILE).exists()
        return self.model_file.exists() and (self.path / METRICS_FILE).exists()

    def load_model(self):
        """The run's trained Keras model."""
        if not self.model_file.exists():
            raise RunError(f"{self.path} is not a finished run: {MODEL_FILE} is missing (resume it with --resume)")
        from psyattr.models.loading import load_model

        return load_model(self.model_file)


__all__ = ["CONFIG_FILE", "METRICS_FILE", "MODEL_FILE", "PREDICTIONS_FILE", "SPLIT_FILE", "Run", "RunError",
           "check_run_dir"]
