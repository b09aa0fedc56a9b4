"""Image files through a served model: scores per file, and heatmap pictures, arrays and records per file."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from psyattr.data.images import image_batches, unique_stems
from psyattr.explain import write_explanation
from psyattr.serving.client import ExplainerClient, TargetSpec


def predict_files(predict: Callable[[np.ndarray], dict[str, np.ndarray]], paths: Sequence[str | os.PathLike],
                  batch_size: int = 16, progress: bool = False) -> tuple[list[dict], list[tuple[Path, str]]]:
    """One record `{"image": path, "outputs": {name: value}}` per readable file, and the skipped files.

    `predict` is `ExplainerClient.predict` or, in process, `psyattr.export.local_predictor(model)`.
    """
    paths = [Path(p) for p in paths]
    records, skipped = [], []
    with tqdm(total=len(paths), desc="predicting", unit="img", disable=not progress) as bar:
        for kept, images, failed in image_batches(paths, batch_size):
            skipped.extend(failed)
            if kept:
                outputs = predict(images)
                records.extend({"image": str(paths[index]), "outputs": {k: float(v[i]) for k, v in outputs.items()}}
                               for i, index in enumerate(kept))
            bar.update(len(kept) + len(failed))
    return records, skipped


def explain_files(client: ExplainerClient, paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                  target: TargetSpec = None, xla: bool = False, progress: bool = False
                  ) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Per readable file: `<stem>.png` (input | heatmap | overlay), `<stem>.heatmap.npy` and `<stem>.json`."""
    paths = [Path(p) for p in paths]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = unique_stems(paths)
    written, skipped = [], []
    with tqdm(total=len(paths), desc="explaining (served)", unit="img", disable=not progress) as bar:
        for kept, images, failed in image_batches(paths, client.batch_size):
            skipped.extend(failed)
            if kept:
                result = client.explain(images, target, xla=xla)
                for i, index in enumerate(kept):
                    heat = result.heatmap[i]
                    record = {
                        "image": str(paths[index]),
                        "server": client.target,
                        "model": client.model_name,
                        "signature": "explain_xla" if xla else "explain",
                        "target": result.targets[i],
                        "score": float(result.scores[i]),
                        "heatmap_sum": float(heat.sum(dtype=np.float64)),
                        "outputs": {k: float(v[i]) for k, v in result.outputs.items()},
                    }
                    written.append(write_explanation(out_dir, stems[index], images[i], heat, "heatmap", heat, record))
            bar.update(len(kept) + len(failed))
    return written, skipped
