"""Explaining image files: decode, batch, explain, and write heatmaps, relevance and scores per image."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from psyattr.checkpoints import atomic_write_text
from psyattr.data.images import ImageError, image_batches, load_model_input, unique_stems
from psyattr.lrp.explainer import LRPExplainer, Target
from psyattr.lrp.heatmap import heatmap, overlay, render, save_png


def _model_input(path: Path, align: bool) -> np.ndarray:
    if not align:
        return load_model_input(path)
    from psyattr.faces.alignment import aligned_model_input

    aligned = aligned_model_input(path)
    if aligned is None:
        raise ImageError(f"no face found in {path}: it cannot be aligned (leave out --align to use it as it is)")
    return aligned[0]


def write_explanation(out_dir: Path, stem: str, image: np.ndarray, heat: np.ndarray, array_name: str,
                      array: np.ndarray, record: dict) -> Path:
    """Write `<stem>.png` (input | heatmap | overlay), `<stem>.<array_name>.npy` and `<stem>.json`; return the PNG."""
    panels = np.concatenate([image.astype(np.uint8), render(heat), overlay(image, heat)], axis=1)
    save_png(panels, out_dir / f"{stem}.png")
    np.save(out_dir / f"{stem}.{array_name}.npy", array.astype(np.float32))
    atomic_write_text(out_dir / f"{stem}.json", json.dumps(record, indent=2))
    return out_dir / f"{stem}.png"


def explain_files(
    explainer: LRPExplainer,
    paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    target: Target = None,
    batch_size: int = 16,
    progress: bool = True,
    align: bool = False,
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Explain every image file (aligned to OMI's framing with `align`); unreadable ones are skipped with the reason."""
    paths = [Path(p) for p in paths]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = unique_stems(paths)
    written, skipped = [], []
    with tqdm(total=len(paths), desc=f"explaining ({explainer.name})", unit="img", disable=not progress) as bar:
        for kept, images, failed in image_batches(paths, batch_size, lambda path: _model_input(path, align)):
            skipped.extend(failed)
            if kept:
                targets = explainer.resolve_targets(target, len(images), images)
                pre_activations, outputs = explainer.scores(images), explainer.predict(images)
                scores, relevance = explainer(images, targets)
                for row, index in enumerate(kept):
                    record = {
                        "image": str(paths[index]),
                        "method": explainer.name,
                        "target": explainer.output_names[targets[row]],
                        "target_index": int(targets[row]),
                        "score": float(scores[row]),
                        "relevance_sum": float(relevance[row].sum()),
                        "outputs": {n: float(v) for n, v in zip(explainer.output_names, outputs[row])},
                        "pre_activations": {n: float(v) for n, v in zip(explainer.output_names, pre_activations[row])},
                    }
                    written.append(write_explanation(out_dir, stems[index], images[row], heatmap(relevance[row]),
                                                     "relevance", relevance[row], record))
            bar.update(len(kept) + len(failed))
    return written, skipped
