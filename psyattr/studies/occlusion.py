"""The occlusion test (paper Sec. 3.7, Fig. 7): cover the mouth, the right eye or both eyes with skin colour."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from psyattr.data.rated import RatedFaces
from psyattr.faces import FaceRegions, occlude, soft_alpha
from psyattr.lrp.heatmap import overlay, symmetric_scale
from psyattr.plots import plt
from psyattr.studies.inputs import HeldOutFaces, StudyInputs, UsableFaces
from psyattr.studies.models import StudyModel
from psyattr.studies.summary import Figure, StudyResult

# What is covered: the subject's right eye is on the image's left.
OCCLUSIONS = {"mouth": ("mouth",), "right_eye": ("right_eye",), "both_eyes": ("left_eye", "right_eye")}
DILATION = 4  # px in the 227 frame: the cover reaches past the lips and the lids, as a patch would
BATCH = 32  # faces occluded and scored at a time: every face's three covered copies never sit in memory at once


def mean_with_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and its two-sided t confidence interval (low, high)."""
    values = np.asarray(values, np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, mean - half, mean + half


def occluded_versions(image: np.ndarray, regions: FaceRegions) -> dict[str, np.ndarray]:
    """The image with each region of OCCLUSIONS covered by the subject's skin colour."""
    return {name: occlude(image, regions.union(*parts), regions, dilation=DILATION) for name, parts in OCCLUSIONS.items()}


def _covered(images: np.ndarray, regions: Sequence[FaceRegions]) -> dict[str, np.ndarray]:
    versions = [occluded_versions(image, r) for image, r in zip(images, regions)]
    return {name: np.stack([v[name] for v in versions]) for name in OCCLUSIONS}


@dataclasses.dataclass(kw_only=True)
class RegionChange:
    """What covering one region did to one model's score and relevance."""

    region: str
    changes: np.ndarray  # (N,) score after minus before, per face, on the rating scale
    score_after: float
    relevance_share_before: float  # share of positive relevance inside the region (first faces)
    relevance_share_after: float

    @property
    def mean_change(self) -> float:
        """The mean score change over the faces."""
        return mean_with_ci(self.changes)[0]

    @property
    def ci95(self) -> tuple[float, float]:
        """The 95% t confidence interval of the mean change."""
        return mean_with_ci(self.changes)[1:]


@dataclasses.dataclass(kw_only=True)
class ModelOcclusion:
    """One model's results: its score of the uncovered faces and the change per covered region."""

    label: str
    framing: str
    score_before: float
    regions: dict[str, RegionChange]


@dataclasses.dataclass(kw_only=True)
class OcclusionResult(StudyResult):
    """Score changes per covered region and model, over the held-out faces that have landmarks."""

    study = "occlusion"
    attribute: str
    faces: HeldOutFaces
    ids: list[str]
    skipped: list[str]
    composite: str
    relevance_faces: int
    models: dict[str, ModelOcclusion]

    @property
    def count(self) -> int:
        """How many faces were covered."""
        return len(self.ids)

    def table_markdown(self) -> str:
        table = ["| model | covered | score before | score after | mean change | 95% CI | relevance in region before "
                 "| after |", "|---|---|---:|---:|---:|---|---:|---:|"]
        for m in self.models.values():
            for name, r in m.regions.items():
                low, high = r.ci95
                table.append(f"| {m.label} | {name.replace('_', ' ')} | {m.score_before:.2f} | {r.score_after:.2f} | "
                             f"{r.mean_change:+.2f} | [{low:+.2f}, {high:+.2f}] | {r.relevance_share_before:.1%} | "
                             f"{r.relevance_share_after:.1%} |")
        return "\n".join(table)

    def numbers(self) -> dict[str, Any]:
        return {"attribute": self.attribute, "faces": self.count, "test_faces": self.faces.to_summary(),
                "skipped": self.skipped, "models": {m.label: {
                    "framing": m.framing, "score_before": m.score_before, "regions": {name: {
                        "mean_change": r.mean_change, "ci95": list(r.ci95), "score_after": r.score_after,
                        "relevance_share_before": r.relevance_share_before,
                        "relevance_share_after": r.relevance_share_after, "changes": r.changes.round(4)}
                        for name, r in m.regions.items()}} for m in self.models.values()}}

    def lines(self) -> list[str]:
        lines = [f"{m.label:24s} {name:10s} {self.attribute} change {r.mean_change:+7.2f} "
                 f"[{r.ci95[0]:+.2f}, {r.ci95[1]:+.2f}]  relevance in region {r.relevance_share_before:.1%}"
                 f" -> {r.relevance_share_after:.1%}" for m in self.models.values() for name, r in m.regions.items()]
        return [*lines, f"{self.count} faces; figures and table in {self.out_dir}"]


def _positive_share(heats: np.ndarray, masks: Sequence[np.ndarray]) -> float:
    positive = np.clip(heats, 0, None)
    inside = sum(float(p[m].sum()) for p, m in zip(positive, masks))
    total = float(positive.sum())
    return inside / total if total > 0 else float("nan")


def _occlude_model(entry: StudyModel, usable: UsableFaces, k: int, composite: str,
                   relevance_faces: int) -> ModelOcclusion:
    before, after = [], {name: [] for name in OCCLUSIONS}
    for start in range(0, len(usable), BATCH):
        rows = slice(start, start + BATCH)
        originals = usable.images(entry, rows)
        before.append(entry.rated_scores(originals, k))
        for name, batch in _covered(originals, usable.regions(entry, rows)).items():
            after[name].append(entry.rated_scores(batch, k))
    before = np.concatenate(before)
    first = slice(0, relevance_faces)
    originals, regions = usable.images(entry, first), usable.regions(entry, first)
    explainer = entry.explainer(composite)
    heat_before = explainer(originals, k).heatmap
    covered = _covered(originals, regions)
    changes = {}
    for name, parts in OCCLUSIONS.items():
        masks = [soft_alpha(r.union(*parts), DILATION) > 0.5 for r in regions]
        scores = np.concatenate(after[name])
        changes[name] = RegionChange(region=name, changes=scores - before, score_after=float(scores.mean()),
                                     relevance_share_before=_positive_share(heat_before, masks),
                                     relevance_share_after=_positive_share(explainer(covered[name], k).heatmap, masks))
    return ModelOcclusion(label=entry.label, framing=entry.framing.name, score_before=float(before.mean()),
                          regions=changes)


def occlusion_study(inputs: StudyInputs, out_dir: str | os.PathLike, *, attribute: str = "happy",
                    composite: str = "alpha2beta1", limit: int | None = None, examples: int = 3,
                    relevance_faces: int = 48) -> OcclusionResult:
    """Score change per covered region over the held-out faces (the first `limit`) for each model."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = inputs.data
    chosen, usable = inputs.faces(limit, regions=True)
    count = min(relevance_faces, len(usable))
    models = {entry.label: _occlude_model(entry, usable, entry.attribute_index(attribute, data), composite, count)
              for entry in inputs.models}
    column = data.resolve(attribute)
    scale_text = f"{data.scale[0]:g}..{data.scale[1]:g}"
    note = data.note(attribute)
    text = (f"Each of {len(usable)} test faces of {data.name} with the mouth, the subject's right eye, or both eyes "
            f"covered by the subject's skin colour (edges softened); the {attribute} score before and after on the "
            f"rating scale ({scale_text}), with 95% confidence intervals of the mean change, and the share of positive "
            f"relevance inside the covered region (first {count} faces). {chosen.describe()} {inputs.framing_text()}"
            + (f" {note}." if note else "")
            + (f" Left out (no landmarks or not framed): {'; '.join(usable.skipped)}." if usable.skipped else ""))
    result = OcclusionResult(
        out_dir=out_dir, text=text, figures=(), attribute=attribute, faces=chosen, ids=usable.ids,
        skipped=usable.skipped, composite=composite, relevance_faces=count, models=models)
    bars = plot_changes(result, out_dir / "occlusion_changes.png", scale_text)
    grid = plot_examples(inputs.models, data, usable, result, min(examples, len(usable)), out_dir / "occlusion_examples.png")
    result.figures = (
        Figure(bars.name, f"Mean change of the {attribute} score ({column}) when a region is covered, with 95% CI, "
                          f"per model; {len(usable)} test faces of {data.name}."),
        Figure(grid.name, f"Examples: LRP ({composite}) heatmaps overlaid on the original and covered faces, one "
                          "colour scale per row; titles give the score on the rating scale."))
    result.write_summary()
    return result


def plot_changes(result: OcclusionResult, path: Path, scale_text: str) -> Path:
    """Bar chart of the mean score change per covered region and model, with 95% CIs."""
    names = list(OCCLUSIONS)
    width = 0.8 / max(len(result.models), 1)
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for j, m in enumerate(result.models.values()):
        means = np.array([m.regions[n].mean_change for n in names])
        errors = np.array([[mean - m.regions[n].ci95[0] for n, mean in zip(names, means)],
                           [m.regions[n].ci95[1] - mean for n, mean in zip(names, means)]])
        ax.bar(np.arange(len(names)) + (j - (len(result.models) - 1) / 2) * width, means, width, yerr=errors,
               capsize=3, label=m.label)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names])
    ax.set_ylabel(f"change of the {result.attribute} score ({scale_text})")
    ax.set_title(f"Covering regions: mean change over {result.count} test faces (95% CI)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_examples(models: Sequence[StudyModel], data: RatedFaces, usable: UsableFaces, result: OcclusionResult, count: int,
                  path: Path) -> Path:
    """Rows: (face, model); columns: original and each occlusion, heatmap overlaid, score in the title."""
    conditions = ["original", *OCCLUSIONS]
    rows = [(f, m) for f in range(count) for m in models]
    fig, axes = plt.subplots(len(rows), len(conditions), figsize=(2.2 * len(conditions), 2.4 * len(rows)),
                             squeeze=False)
    for r, (f, entry) in enumerate(rows):
        k = entry.attribute_index(result.attribute, data)
        face = slice(f, f + 1)
        original = usable.images(entry, face)
        covered = _covered(original, usable.regions(entry, face))
        batch = np.concatenate([original, *(covered[n] for n in OCCLUSIONS)])
        heats = entry.explainer(result.composite)(batch, k).heatmap
        scores = entry.rated_scores(batch, k)
        scale = symmetric_scale(heats)
        for c, condition in enumerate(conditions):
            ax = axes[r, c]
            ax.imshow(overlay(batch[c], heats[c], scale))
            change = "" if c == 0 else f" ({scores[c] - scores[0]:+.1f})"
            ax.set_title(f"{condition.replace('_', ' ')}: {scores[c]:.1f}{change}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(f"face {usable.ids[f]}\n{entry.label}", fontsize=7)
    fig.suptitle(f"{result.attribute} score when covering regions (LRP {result.composite}; red raises, blue lowers "
                 "the score)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
