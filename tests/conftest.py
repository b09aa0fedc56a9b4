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
def face_images() -> np.ndarray:
    """Ten faces as model input: RGB float32 (10, 227, 227, 3) in 0..255 (5 OMI, 5 UTKFace).

    Without the data folder, ten synthetic images of the same shape stand in (smooth random shading with a
    face-sized ellipse): the tests that use them compare one path of psyattr with another on random nets,
    which needs images but not real faces. Tests about faces themselves ask for `omi_dir` and the others.
    """
    from psyattr.data.images import load_model_input

    root = data_dir()
    if root is not None and (root / "omi").exists() and (root / "utkface_part1").exists():
        omi = sorted((root / "omi" / "images_256").glob("*.jpg"))[:5]
        utk = sorted((root / "utkface_part1" / "images").glob("*.jpg"))[::1000][:5]
        return np.stack([load_model_input(p) for p in omi + utk])
    return synthetic_faces(10)


def synthetic_faces(count: int, seed: int = 0) -> np.ndarray:
    """`count` smooth synthetic images (N, 227, 227, 3), float32 whole numbers in 0..255, each different."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:227, 0:227] / 226.0
    images = []
    for _ in range(count):
        shading = sum(rng.normal() * np.cos(np.pi * (a * x + b * y) + rng.uniform(0, 2 * np.pi))
                      for a, b in rng.integers(0, 5, size=(6, 2)))
        ellipse = ((x - 0.5 - rng.normal(0, 0.03)) / 0.3) ** 2 + ((y - 0.5) / 0.4) ** 2 < 1
        # Kept off 0 and 255: clipped plateaus would tie in max-pooling, where gradients may go either way.
        channels = [110 + 12 * shading + 40 * ellipse + rng.normal(0, 6, (227, 227)) for _ in range(3)]
        images.append(np.round(np.clip(np.stack(channels, axis=-1), 0, 255)))  # whole pixel values, as photos have
    return np.asarray(images, np.float32)
