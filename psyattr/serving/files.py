"""Image files through a served model: scores per file, and heatmap pictures, arrays and records per file."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from psyattr.checkpoints import atomic_write_text
from psyattr.data.images import ImageError, load_model_input
from psyattr.lrp.heatmap import overlay, render, save_png
from psyattr.serving.client import ExplainerClient, TargetSpec

log = logging.getLogger(__name__)


def _chunks(paths: Sequence[Path], size: int) -> Iterator[tuple[list[Path], np.ndarray, list[tuple[Path, str]]]]:
    for start in range(0, len(paths), size):
        kept, images, skipped = [], [], []
        for path in paths[start:start + size]:
            try:
                images.append(load_model_input(path))
                kept.append(path)
            except (ImageError, FileNotFoundError, IsADirectoryError) as err:
                log.warning("skipped %s: %s", path, err)
                skipped.append((path, str(err)))
        yield kept, np.stack(images) if images else np.zeros((0, 227, 227, 3), np.float32), skipped


def _stems(paths: Sequence[Path]) -> dict[Path, str]:
    seen: dict[str, int] = {}
    stems = {}
    for path in paths:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        stems[path] = path.stem if count == 0 else f"{path.stem}_{count + 1}"
    return stems


def predict_files(predict: Callable[[np.ndarray], dict[str, np.ndarray]], paths: Sequence[str | os.PathLike],
                  batch_size: int = 16, progress: bool = False) -> tuple[list[dict], list[tuple[Path, str]]]:
    """One record `{"image": path, "outputs": {name: value}}` per readable file, and the skipped files.

    `predict` is `ExplainerClient.predict` or, in process, `psyattr.export.local_predictor(model)`.
    """
    paths = [Path(p) for p in paths]
    records, skipped = [], []
    with tqdm(total=len(paths), desc="predicting", unit="img", disable=not progress) as bar:
        for kept, images, failed in _chunks(paths, batch_size):
            skipped.extend(failed)
            if kept:
                outputs = predict(images)
                records.extend({"image": str(path), "outputs": {k: float(v[i]) for k, v in outputs.items()}}
                               for i, path in enumerate(kept))
            bar.update(len(kept) + len(failed))
    return records, skipped


def explain_files(client: ExplainerClient, paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                  target: TargetSpec = None, xla: bool = False, progress: bool = False
                  ) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Per readable file: `<stem>.png` (input | heatmap | overlay), `<stem>.heatmap.npy` and `<stem>.json`."""
    paths = [Path(p) for p in paths]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = _stems(paths)
    written, skipped = [], []
    with tqdm(total=len(paths), desc="explaining (served)", unit="img", disable=not progress) as bar:
        for kept, images, failed in _chunks(paths, client.batch_size):
            skipped.extend(failed)
            if kept:
                result = client.explain(images, target, xla=xla)
                for i, path in enumerate(kept):
                    heat = result.heatmap[i]
                    stem = stems[path]
                    panels = np.concatenate([images[i].astype(np.uint8), render(heat), overlay(images[i], heat)], axis=1)
                    save_png(panels, out_dir / f"{stem}.png")
                    np.save(out_dir / f"{stem}.heatmap.npy", heat.astype(np.float32))
                    record = {
                        "image": str(path),
                        "server": client.target,
                        "model": client.model_name,
                        "signature": "explain_xla" if xla else "explain",
                        "target": result.targets[i],
                        "score": float(result.scores[i]),
                        "heatmap_sum": float(heat.sum(dtype=np.float64)),
                        "outputs": {k: float(v[i]) for k, v in result.outputs.items()},
                    }
                    atomic_write_text(out_dir / f"{stem}.json", json.dumps(record, indent=2))
                    written.append(out_dir / f"{stem}.png")
            bar.update(len(kept) + len(failed))
    return written, skipped
