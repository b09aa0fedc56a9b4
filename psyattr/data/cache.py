"""Decode a list of images once into one uint8 array, cached on disk, skipping unreadable files."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from psyattr.data.images import ImageError, load_rgb

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """`$PSYATTR_CACHE_DIR`, else `~/.cache/psyattr`."""
    return Path(os.environ.get("PSYATTR_CACHE_DIR") or Path.home() / ".cache" / "psyattr")


def _cache_key(paths: Sequence[Path], size: int, key: str) -> str:
    digest = hashlib.sha1(f"{size}|{key}".encode())
    for path in paths:
        stat = path.stat() if path.exists() else None
        digest.update(f"{path.resolve()}|{stat and stat.st_size}|{stat and stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def report_failures(failed: Sequence[tuple[str, str]], shown: int = 10) -> None:
    """Log one warning naming the images that could not be used, each with its reason."""
    if failed:
        listed = "; ".join(f"{name}: {why}" for name, why in failed[:shown])
        log.warning("skipped %d image(s) that could not be used: %s%s", len(failed), listed,
                    f" (and {len(failed) - shown} more)" if len(failed) > shown else "")


def decode_images(
    paths: Sequence[str | os.PathLike],
    size: int = 256,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    load: Callable[[int, Path], np.ndarray] | None = None,
    key: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """Decode `paths` to `(N_ok, size, size, 3)` uint8 and the indices of the decoded ones; cached by content.

    `load(index, path)` makes one image (default: decoded and resized to `size`); `key` names what it does
    (e.g. a framing), so that caches of different loaders never mix. Images that fail are skipped and logged
    with their reasons.
    """
    paths = [Path(p) for p in paths]
    load = load or (lambda index, path: load_rgb(path, size))
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    digest = _cache_key(paths, size, key)
    array_file, index_file = cache / f"images_{digest}.npy", cache / f"images_{digest}.json"
    if array_file.exists() and index_file.exists():
        try:
            index = json.loads(index_file.read_text())
            kept = np.asarray(index["kept"], dtype=int)
            images = np.load(array_file, mmap_mode="r")
            if images.shape == (len(kept), size, size, 3):
                report_failures([tuple(f) for f in index.get("failed", [])])
                return np.asarray(images), kept
        except (ValueError, KeyError, OSError) as err:
            log.warning("ignoring unreadable image cache %s: %s", array_file, err)
    images = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    kept_list, failed = [], []
    for index, path in enumerate(tqdm(paths, desc="decoding images", unit="img", disable=not progress)):
        try:
            images[len(kept_list)] = load(index, path)
        except (ImageError, FileNotFoundError) as err:
            failed.append((path.name, str(err)))
            continue
        kept_list.append(index)
    report_failures(failed)
    images = images[: len(kept_list)]
    kept = np.asarray(kept_list, dtype=int)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        # Write beside the final names and rename, so a killed run never leaves a half cache behind; the temporary
        # names are this writer's own, so two processes filling the same cache never write into one file.
        unique = uuid.uuid4().hex[:12]
        tmp_array = array_file.with_name(f".{array_file.stem}.{unique}.tmp.npy")
        np.save(tmp_array, images)
        os.replace(tmp_array, array_file)
        tmp_index = index_file.with_name(f".{index_file.name}.{unique}.tmp")
        tmp_index.write_text(json.dumps({"kept": kept.tolist(), "size": size, "key": key, "failed": failed}))
        os.replace(tmp_index, index_file)
    except OSError as err:
        log.warning("could not write the image cache in %s: %s", cache, err)
    return images, kept
