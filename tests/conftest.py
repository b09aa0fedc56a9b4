"""Shared fixtures: the real face data under $PSYATTR_DATA_DIR, and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

DATA_ENV = "PSYATTR_DATA_DIR"


def data_dir() -> Path | None:
    """The shared data folder, or None when $PSYATTR_DATA_DIR is unset or missing."""
    value = os.environ.get(DATA_ENV)
    # Resolved, so that paths written into test files stay valid from any working folder.
    return Path(value).resolve() if value and Path(value).is_dir() else None


def require_data(subfolder: str) -> Path:
    """The data subfolder, or skip the test saying how to provide it."""
    root = data_dir()
    if root is None:
        pytest.skip(f"${DATA_ENV} is not set to the shared data folder (e.g. ../shared/data): real faces needed")
    path = root / subfolder
    if not path.exists():
        pytest.skip(f"{path} is missing: the test needs the {subfolder} data set")
    return path


@pytest.fixture(scope="session")
def omi_dir() -> Path:
    return require_data("omi")


@pytest.fixture(scope="session")
def utkface_dir() -> Path:
    return require_data("utkface_part1")


@pytest.fixture(scope="session")
def yale_dir() -> Path:
    return require_data("yalefaces_expressions")


@pytest.fixture(scope="session")
def face_images(omi_dir: Path, utkface_dir: Path) -> np.ndarray:
    """Ten real faces as model input: RGB float32 (10, 227, 227, 3) in 0..255 (5 OMI, 5 UTKFace)."""
    from psyattr.data.images import load_model_input

    omi = sorted((omi_dir / "images_256").glob("*.jpg"))[:5]
    utk = sorted((utkface_dir / "images").glob("*.jpg"))[::1000][:5]
    return np.stack([load_model_input(p) for p in omi + utk])
