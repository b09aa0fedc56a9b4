"""Explaining image files: decode, batch, explain, and write heatmaps, relevance and scores per image."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from psyattr.checkpoints import atomic_write_text
from psyattr.data.images import ImageError, load_model_input
from psyattr.lrp.explainer import LRPExplainer, Target
from psyattr.lrp.heatmap import heatmap, overlay, render, save_png

log = logging.getLogger(__name__)


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        stems.append(path.stem if count == 0 else f"{path.stem}_{count + 1}")
    return stems


def _model_input(path: Path, align: bool) -> np.ndarray:
    if not align:
        return load_model_input(path)
    from psyattr.faces.alignment import aligned_model_input

    aligned = aligned_model_input(path)
    if aligned is None:
        raise ImageError(f"no face found in {path}: it cannot be aligned (leave out --align to use it as it is)")
    return aligned[0]


def _batches(paths: Sequence[Path], size: int, align: bool = False
             ) -> Iterator[tuple[list[int], np.ndarray, list[tuple[Path, str]]]]:
    for start in range(0, len(paths), size):
        kept, images, failed = [], [], []
        for index in range(start, min(start + size, len(paths))):
            try:
                images.append(_model_input(paths[index], align))
                kept.append(index)
            except (ImageError, FileNotFoundError, IsADirectoryError) as err:
                failed.append((paths[index], str(err)))
        yield kept, np.stack(images) if images else np.zeros((0, 227, 227, 3), np.float32), failed


def write_explanation(out_dir: Path, stem: str, image: np.ndarray, relevance: np.ndarray, record: dict) -> None:
    """Write `<stem>.png` (input | heatmap | overlay), `<stem>.relevance.npy` and `<stem>.json`."""
    heat = heatmap(relevance)
    panels = np.concatenate([image.astype(np.uint8), render(heat), overlay(image, heat)], axis=1)
    save_png(panels, out_dir / f"{stem}.png")
    np.save(out_dir / f"{stem}.relevance.npy", relevance.astype(np.float32))
    atomic_write_text(out_dir / f"{stem}.json", json.dumps(record, indent=2))


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
    stems = _unique_stems(paths)
    written, skipped = [], []
    with tqdm(total=len(paths), desc=f"explaining ({explainer.name})", unit="img", disable=not progress) as bar:
        for kept, images, failed in _batches(paths, batch_size, align):
            for path, why in failed:
                log.warning("skipped %s: %s", path, why)
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
                    write_explanation(out_dir, stems[index], images[row], relevance[row], record)
                    written.append(out_dir / f"{stems[index]}.png")
            bar.update(len(kept) + len(failed))
    return written, skipped
