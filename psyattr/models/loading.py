"""Load a model from what a user types: a `.keras` file, a run folder, or a base net name with a preset."""

from __future__ import annotations

import os
from pathlib import Path

import keras

from psyattr.models.levi_hassner import TASKS, build_base_model
from psyattr.models.weights import WeightsError, available_presets

DEFAULT_PRESET = "utkface"


def load_model(spec: str | os.PathLike) -> keras.Model:
    """`model.keras`, a run folder holding `model.keras`, `age`/`gender` (default preset) or `age:PRESET`."""
    path = Path(spec)
    if path.is_dir():
        path = path / "model.keras"
        if not path.exists():
            raise FileNotFoundError(f"{spec} holds no model.keras: pass a run folder of psyattr, or a .keras file")
    if path.suffix == ".keras":
        if not path.exists():
            raise FileNotFoundError(f"model file not found: {path}")
        try:
            return keras.models.load_model(path, compile=False)
        except Exception as err:  # a damaged archive raises many kinds
            raise ValueError(f"cannot load model {path}: {err}") from err
    task, _, preset = str(spec).partition(":")
    if task in TASKS:
        preset = preset or DEFAULT_PRESET
        try:
            return build_base_model(task, weights=preset)
        except WeightsError as err:
            raise ValueError(str(err)) from err
    presets = ", ".join(f"{t}:{p}" for p, tasks in available_presets().items() for t in tasks)
    raise ValueError(f"cannot load model {spec!r}: give a .keras file, a run folder, or a base net "
                     f"({', '.join(TASKS)}{'; presets ' + presets if presets else ''})")
