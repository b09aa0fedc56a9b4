"""Heatmap grids: test faces explained by several models, all on one colour scale (as the paper compares them)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from psyattr.lrp.heatmap import render, symmetric_scale
from psyattr.plots import plt
from psyattr.studies.inputs import HeldOutFaces, StudyInputs, UsableFaces
from psyattr.studies.models import StudyModel
from psyattr.studies.summary import Figure, StudyResult


@dataclasses.dataclass(kw_only=True)
class ModelHeatmaps:
    """One model's explanations of the shown faces for one attribute."""

    label: str
    framing: str
    ratings: np.ndarray  # (N,) predicted, on the attribute's rating scale
    mean_abs_relevance: float  # per pixel

    @property
    def mean_rating(self) -> float:
        """The mean predicted rating of the shown faces."""
        return float(np.mean(self.ratings))


@dataclasses.dataclass(kw_only=True)
class AttributeHeatmaps:
    """One attribute's grid: the column it is rated in, the shared colour scale, and each model's numbers."""

    attribute: str
    column: str
    scale: float
    figure: str
    models: dict[str, ModelHeatmaps]


@dataclasses.dataclass(kw_only=True)
class HeatmapResult(StudyResult):
    """Heatmaps of the shown faces, per attribute and model."""

    study = "heatmaps"
    faces: HeldOutFaces
    ids: list[str]
    skipped: list[str]
    composite: str
    attributes: dict[str, AttributeHeatmaps]

    def table_markdown(self) -> str | None:
        rows = [f"| {a.attribute} | {m.label} | {m.mean_rating:.2f} | {m.mean_abs_relevance:.3g} |"
                for a in self.attributes.values() for m in a.models.values()]
        if not rows:
            return None
        return ("| attribute | model | mean predicted rating | mean abs. relevance per pixel |\n|---|---|---:|---:|\n"
                + "\n".join(rows))

    def numbers(self) -> dict[str, Any]:
        return {"test_faces": self.faces.to_summary(), "shown": self.ids, "skipped": self.skipped,
                "composite": self.composite,
                "attributes": {a.attribute: {"column": a.column, "scale": a.scale, "models": {
                    m.label: {"framing": m.framing, "mean_rating": m.mean_rating, "ratings": m.ratings.round(3),
                              "mean_abs_relevance": m.mean_abs_relevance} for m in a.models.values()}}
                    for a in self.attributes.values()}}

    def lines(self) -> list[str]:
        return [*(f"{a.attribute:12s} {m.label:24s} mean predicted rating {m.mean_rating:6.2f}  "
                  f"mean |relevance| {m.mean_abs_relevance:.3g}" for a in self.attributes.values()
                  for m in a.models.values()),
                f"{len(self.ids)} faces; heatmaps in {self.out_dir}"]


def heatmap_study(inputs: StudyInputs, out_dir: str | os.PathLike, *, attribute: str = "happy",
                  attributes: Sequence[str] | None = None, composite: str = "alpha2beta1",
                  limit: int | None = None) -> HeatmapResult:
    """One grid per attribute: the first `limit` held-out faces (rows) explained by every model (columns)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = inputs.data
    chosen, usable = inputs.faces(limit)
    figures, results = [], {}
    for name in attributes or [attribute]:
        column = data.resolve(name)
        models = [m for m in inputs.models if column in m.attributes]
        if not models:
            continue
        heats, by_model = {}, {}
        for entry in models:
            images = usable.images(entry)
            k = entry.attribute_index(name, data)
            heats[entry.label] = entry.explainer(composite)(images, k).heatmap
            by_model[entry.label] = ModelHeatmaps(label=entry.label, framing=entry.framing.name,
                                                  ratings=entry.rated_scores(images, k),
                                                  mean_abs_relevance=float(np.mean(np.abs(heats[entry.label]))))
        ratings = data.ratings[column][usable.indices]
        labels = [f"face {i}\nrated {r:.0f}" for i, r in zip(usable.ids, ratings)]
        file = f"heatmaps_{name}.png"
        scale = plot_heatmap_grid(models, usable, heats, out_dir / file, labels,
                                  f"{name}" + (f" ({column})" if column != name else "") +
                                  f": LRP {composite}, test faces of {data.name}")
        note = data.note(name)
        figures.append(Figure(file, f"{name}: relevance of {len(usable)} test faces for each model, one colour scale "
                                    f"(±{scale:.3g}) across models so they compare directly; red raises the score, "
                                    f"blue lowers it. Data: {data.name}." + (f" {note}." if note else "")))
        results[name] = AttributeHeatmaps(attribute=name, column=column, scale=scale, figure=file, models=by_model)
    text = (f"LRP ({composite}) heatmaps of {len(usable)} test faces for every model, one colour scale per attribute. "
            f"{chosen.describe()} {inputs.framing_text()}"
            + (f" Left out: {'; '.join(usable.skipped)}." if usable.skipped else ""))
    result = HeatmapResult(out_dir=out_dir, text=text, figures=tuple(figures), faces=chosen, ids=usable.ids,
                           skipped=usable.skipped, composite=composite, attributes=results)
    result.write_summary()
    return result


def plot_heatmap_grid(models: Sequence[StudyModel], usable: UsableFaces, heats: dict[str, np.ndarray], path: Path,
                      row_labels: Sequence[str], title: str) -> float:
    """Rows of faces; per framing an input column, then that framing's models' heatmaps; return the shared scale."""
    scale = symmetric_scale(*heats.values())
    columns = []  # (title, images or None, heatmaps or None)
    framings = list(dict.fromkeys(entry.framing for entry in models))
    for framing in framings:
        own = [entry for entry in models if entry.framing == framing]
        shown = "input" if len(framings) == 1 else f"input ({framing.name} framing)"
        columns.append((shown, usable.images(own[0]), None))
        columns += [(entry.label, None, heats[entry.label]) for entry in own]
    count = len(usable)
    fig, axes = plt.subplots(count, len(columns), figsize=(2.0 * len(columns), 2.0 * count + 0.6), squeeze=False)
    for col, (name, images, maps) in enumerate(columns):
        axes[0, col].set_title(name, fontsize=8)
        for row in range(count):
            axes[row, col].imshow(images[row].astype(np.uint8) if maps is None else render(maps[row], scale))
    for row, label in enumerate(row_labels):
        axes[row, 0].set_ylabel(label, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{title}\nred: evidence for the output, blue: against; one colour scale for all panels "
                 f"(±{scale:.3g})", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return scale
