"""Explaining photos: frame each as the model expects, explain in batches, write heatmaps, relevance and scores."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from psyattr.checkpoints import atomic_write_text
from psyattr.data.images import decode_rgb, unique_stems
from psyattr.faces.framing import FramedFace, Framing, framed_batches
from psyattr.explanation import Explanation
from psyattr.lrp.heatmap import overlay, render, save_png, symmetric_scale
from psyattr.models.outputs import Target


def write_explanation(out_dir: Path, stem: str, face: FramedFace, heat: np.ndarray, array_name: str,
                      array: np.ndarray, record: dict, on_original: bool = False, original: Path | None = None) -> Path:
    """Write `<stem>.png` (framed face | heatmap | overlay), `<stem>.<array_name>.npy` and `<stem>.json`.

    With `on_original`, also `<stem>.original.png`: the photo as given beside the heatmap warped back onto it.
    """
    image = face.model_input()
    scale = symmetric_scale(heat)
    panels = np.concatenate([image.astype(np.uint8), render(heat, scale), overlay(image, heat, scale)], axis=1)
    save_png(panels, out_dir / f"{stem}.png")
    np.save(out_dir / f"{stem}.{array_name}.npy", array.astype(np.float32))
    if on_original and original is not None:
        photo = decode_rgb(original)
        back = face.to_original(heat)
        save_png(np.concatenate([photo, overlay(photo, back, scale)], axis=1), out_dir / f"{stem}.original.png")
        record = {**record, "on_original": f"{stem}.original.png"}
    atomic_write_text(out_dir / f"{stem}.json", json.dumps(record, indent=2))
    return out_dir / f"{stem}.png"


def framing_record(face: FramedFace) -> dict:
    """What a result says of how its photo was framed."""
    return {"framing": face.framing.name, **({"framing_notes": list(face.notes)} if face.notes else {})}


def explain_files(
    explainer: Callable[[np.ndarray, Target], Explanation],
    paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    framing: Framing,
    target: Target = None,
    batch_size: int = 16,
    progress: bool = True,
    on_original: bool = False,
    describe: dict | None = None,
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Explain every photo, framed by `framing`; photos that cannot be read or framed are skipped with the reason.

    `explainer` is any attribution method (`LRPExplainer`, a served model's `ExplainerClient`, ...) called as
    `explainer(images, target)`; `describe` adds fields to every record (the method, the server).
    """
    paths = [Path(p) for p in paths]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = unique_stems(paths)
    written, skipped = [], []
    label = (describe or {}).get("method") or (describe or {}).get("model") or "explaining"
    with tqdm(total=len(paths), desc=f"explaining ({label})", unit="img", disable=not progress) as bar:
        for batch in framed_batches(paths, framing, batch_size):
            skipped.extend(batch.failed)
            if batch.faces:
                explanation = explainer(batch.images, target)
                heats = explanation.heatmap
                per_value = np.asarray(explanation.relevance).ndim == 4
                for row, (index, face) in enumerate(zip(batch.indices, batch.faces)):
                    record = {"image": str(paths[index]), **framing_record(face), **(describe or {}),
                              **explanation.row(row)}
                    array = explanation.relevance[row]
                    written.append(write_explanation(out_dir, stems[index], face, heats[row],
                                                     "relevance" if per_value else "heatmap", array, record,
                                                     on_original, paths[index]))
            bar.update(len(batch.faces) + len(batch.failed))
    return written, skipped
