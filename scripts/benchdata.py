"""Inputs shared by the benchmark scripts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def faces(count: int) -> np.ndarray:
    """`count` real faces from $PSYATTR_DATA_DIR/omi as model input, else random pixels (said on stdout)."""
    from psyattr.data.images import load_model_input

    folder = Path(os.environ.get("PSYATTR_DATA_DIR", "")) / "omi" / "images_256"
    files = sorted(folder.glob("*.jpg"))[:count] if folder.is_dir() else []
    if len(files) == count:
        return np.stack([load_model_input(p) for p in files])
    print(f"no OMI faces under $PSYATTR_DATA_DIR: benchmarking on {count} random images")
    return np.random.default_rng(0).uniform(0, 255, (count, 227, 227, 3)).astype(np.float32)
