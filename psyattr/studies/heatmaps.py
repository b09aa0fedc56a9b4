"""Heatmap grids: test faces explained by several models, all on one colour scale (as the paper compares them)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from psyattr.data.rated import RatedFaces
from psyattr.lrp.heatmap import heatmap, heatmap_grid
from psyattr.studies.common import StudyModel, model_inputs, write_summary


def explain_with(models: Sequence[StudyModel], images: np.ndarray, attribute: str, data: RatedFaces | None,
                 composite: str = "alpha2beta1") -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per model label: heatmaps (N, 227, 227) and [0, 1] scores (N,) of `attribute`."""
    heats, scores = {}, {}
    for entry in models:
        index = entry.attribute_index(attribute, data)
        explanation = entry.explainer(composite)(images, index)
        heats[entry.label] = heatmap(explanation.relevance)
        scores[entry.label] = entry.scores(images)[:, index]
    return heats, scores


def heatmap_study(models: Sequence[StudyModel], data: RatedFaces, attributes: Sequence[str], indices: Sequence[int],
                  out_dir: str | os.PathLike, composite: str = "alpha2beta1") -> Path:
    """One grid per attribute: the faces `indices` of `data` (rows) explained by every model (columns)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images, kept = model_inputs([data.paths[i] for i in indices])
    ids = [data.ids[indices[k]] for k in kept]
    figures, rows = [], []
    for attribute in attributes:
        usable = [m for m in models if data.resolve(attribute) in m.attributes]
        if not usable:
            continue
        heats, scores = explain_with(usable, images, attribute, data, composite)
        column = data.resolve(attribute)
        ratings = data.ratings[column][[indices[k] for k in kept]]
        labels = [f"face {i}\nrated {r:.0f}" for i, r in zip(ids, ratings)]
        name = f"heatmaps_{attribute}.png"
        scale = heatmap_grid(images, heats, out_dir / name, shared_scale=True, row_labels=labels,
                             title=f"{attribute}" + (f" ({column})" if column != attribute else "") +
                             f": LRP {composite}, test faces of {data.name}")
        note = data.note(attribute)
        figures.append((name, f"{attribute}: relevance of {len(ids)} test faces for each model, one colour scale "
                              f"(±{scale:.3g}) across models so they compare directly; red raises the score, blue "
                              f"lowers it. Data: {data.name}." + (f" {note}." if note else "")))
        for label in heats:
            rows.append(f"| {attribute} | {label} | {float(data.to_scale(np.mean(scores[label]))):.2f} | "
                        f"{np.mean(np.abs(heats[label])):.3g} |")
    table = ("| attribute | model | mean predicted rating | mean abs. relevance per pixel |\n|---|---|---:|---:|\n"
             + "\n".join(rows)) if rows else None
    write_summary(out_dir, "Heatmaps of test faces",
                  f"LRP ({composite}) heatmaps of {len(ids)} test faces for every model, one colour scale per attribute.",
                  figures, table)
    return out_dir
