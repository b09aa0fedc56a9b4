"""Frozen pool5 features of face images, computed once and cached by the weights and pixels that made them."""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from pathlib import Path

import keras
import numpy as np

from psyattr.data.cache import default_cache_dir
from psyattr.data.pipeline import center_crops
from psyattr.models.forward import Forward

log = logging.getLogger(__name__)


def _key(model: keras.Model, images_256: np.ndarray) -> str:
    digest = hashlib.sha1()
    for weight in model.weights:
        digest.update(np.asarray(weight).tobytes())
    digest.update(np.ascontiguousarray(images_256).tobytes())
    return digest.hexdigest()[:20]


def pool5_features(model: keras.Model, images_256: np.ndarray, cache_dir: str | os.PathLike | None = None,
                   progress: bool = False, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Features of the centre crops of 256 px images and of their mirror images, `(N, D)` each."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"features_{_key(model, images_256)}.npz"
    if path.exists():
        try:
            with np.load(path) as stored:
                return stored["center"], stored["mirrored"]
        except (OSError, ValueError, KeyError) as err:
            log.warning("ignoring unreadable feature cache %s: %s", path, err)
    crops = center_crops(images_256)
    forward = Forward(model, batch_size)
    center = forward(crops, "features" if progress else None)
    mirrored = forward(crops[:, :, ::-1], "features of mirrored faces" if progress else None)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.partial.npz")  # this writer's own
        np.savez(tmp, center=center, mirrored=mirrored)
        os.replace(tmp, path)
    except OSError as err:
        log.warning("could not cache features in %s: %s", cache, err)
    return center, mirrored
