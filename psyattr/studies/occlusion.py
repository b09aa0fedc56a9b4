"""The occlusion test (paper Sec. 3.7, Fig. 7): cover the mouth, the right eye or both eyes with skin colour."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from psyattr.data.rated import RatedFaces
from psyattr.faces import FaceRegions, occlude, regions_for_item, soft_alpha
from psyattr.lrp.heatmap import heatmap, overlay, symmetric_scale
from psyattr.plots import plt
from psyattr.studies.common import StudyModel, model_inputs, write_summary

log = logging.getLogger(__name__)

# What is covered: the subject's right eye is on the image's left.
OCCLUSIONS = {"mouth": ("mouth",), "right_eye": ("right_eye",), "both_eyes": ("left_eye", "right_eye")}
DILATION = 4  # px in the 227 frame: the cover reaches past the lips and the lids, as a patch would


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


def occlusion_study(models: Sequence[StudyModel], data: RatedFaces, attribute: str, indices: Sequence[int],
                    out_dir: str | os.PathLike, composite: str = "alpha2beta1", examples: int = 3,
                    relevance_faces: int = 48) -> dict[str, Any]:
    """Score change per covered region over the faces `indices` for each model; figures, table and numbers."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images, kept = model_inputs([data.paths[i] for i in indices])
    faces, originals, covered, skipped = [], [], {name: [] for name in OCCLUSIONS}, []
    for row, k in enumerate(kept):
        index = indices[k]
        regions = regions_for_item(data, index)
        if regions is None:
            skipped.append(data.ids[index])
            continue
        faces.append((index, regions))
        originals.append(images[row])
        for name, image in occluded_versions(images[row], regions).items():
            covered[name].append(image)
    if skipped:
        log.warning("no face landmarks found for %d face(s), left out: %s", len(skipped), ", ".join(skipped[:10]))
    if not faces:
        raise ValueError(f"no face of the {len(indices)} given has landmarks: nothing to occlude")
    originals = np.stack(originals)
    covered = {name: np.stack(batch) for name, batch in covered.items()}
    results: dict[str, Any] = {"attribute": attribute, "faces": len(faces), "skipped": skipped, "models": {}}
    table = ["| model | covered | score before | score after | mean change | 95% CI | relevance in region before | "
             "after |", "|---|---|---:|---:|---:|---|---:|---:|"]
    for entry in models:
        k = entry.attribute_index(attribute, data)
        before = entry.rated_scores(originals, k)
        explainer = entry.explainer(composite)
        count = min(relevance_faces, len(faces))
        heat_before = heatmap(explainer(originals[:count], k).relevance)
        model_result = {"score_before": float(before.mean()), "regions": {}}
        for name, parts in OCCLUSIONS.items():
            after = entry.rated_scores(covered[name], k)
            mean, ci_low, ci_high = mean_with_ci(after - before)
            heat_after = heatmap(explainer(covered[name][:count], k).relevance)
            masks = [soft_alpha(regions.union(*parts), DILATION) > 0.5 for _, regions in faces[:count]]
            share_before = _positive_share(heat_before, masks)
            share_after = _positive_share(heat_after, masks)
            model_result["regions"][name] = {
                "mean_change": mean, "ci95": [ci_low, ci_high], "score_after": float(after.mean()),
                "relevance_share_before": share_before, "relevance_share_after": share_after,
                "changes": (after - before).round(4).tolist(),
            }
            table.append(f"| {entry.label} | {name.replace('_', ' ')} | {before.mean():.2f} | {after.mean():.2f} | "
                         f"{mean:+.2f} | [{ci_low:+.2f}, {ci_high:+.2f}] | {share_before:.1%} | {share_after:.1%} |")
        results["models"][entry.label] = model_result
    column = data.resolve(attribute)
    scale_text = f"{data.scale[0]:g}..{data.scale[1]:g}"
    bars = plot_changes(results, out_dir / "occlusion_changes.png", attribute, scale_text)
    grid = plot_examples(models, data, attribute, faces[:examples], originals[:examples],
                         {n: b[:examples] for n, b in covered.items()}, composite, out_dir / "occlusion_examples.png")
    note = data.note(attribute)
    write_summary(
        out_dir, "Occluding the mouth and the eyes",
        f"Each of {len(faces)} test faces of {data.name} with the mouth, the subject's right eye, or both eyes covered "
        f"by the subject's skin colour (edges softened); the {attribute} score before and after on the rating scale "
        f"({scale_text}), with 95% confidence intervals of the mean change, and the share of positive relevance "
        f"inside the covered region (first {min(relevance_faces, len(faces))} faces)."
        + (f" {note}." if note else "") + (f" No landmarks for {len(skipped)} face(s): left out." if skipped else ""),
        [(bars.name, f"Mean change of the {attribute} score ({column}) when a region is covered, with 95% CI, "
                     f"per model; {len(faces)} test faces of {data.name}."),
         (grid.name, f"Examples: LRP ({composite}) heatmaps overlaid on the original and covered faces, one colour "
                     "scale per row; titles give the score on the rating scale.")],
        "\n".join(table), numbers=results)
    return results


def _positive_share(heats: np.ndarray, masks: Sequence[np.ndarray]) -> float:
    positive = np.clip(heats, 0, None)
    inside = sum(float(p[m].sum()) for p, m in zip(positive, masks))
    total = float(positive.sum())
    return inside / total if total > 0 else float("nan")


def plot_changes(results: dict[str, Any], path: Path, attribute: str, scale_text: str) -> Path:
    """Bar chart of the mean score change per covered region and model, with 95% CIs."""
    labels = list(results["models"])
    names = list(OCCLUSIONS)
    width = 0.8 / max(len(labels), 1)
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for j, label in enumerate(labels):
        regions = results["models"][label]["regions"]
        means = [regions[n]["mean_change"] for n in names]
        errors = np.array([[m - regions[n]["ci95"][0] for n, m in zip(names, means)],
                           [regions[n]["ci95"][1] - m for n, m in zip(names, means)]])
        ax.bar(np.arange(len(names)) + (j - (len(labels) - 1) / 2) * width, means, width, yerr=errors, capsize=3,
               label=label)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names])
    ax.set_ylabel(f"change of the {attribute} score ({scale_text})")
    ax.set_title(f"Covering regions: mean change over {results['faces']} test faces (95% CI)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_examples(models: Sequence[StudyModel], data: RatedFaces, attribute: str, faces, originals: np.ndarray,
                  covered: dict[str, np.ndarray], composite: str, path: Path) -> Path:
    """Rows: (face, model); columns: original and each occlusion, heatmap overlaid, score in the title."""
    conditions = ["original", *OCCLUSIONS]
    rows = [(f, m) for f in range(len(faces)) for m in models]
    fig, axes = plt.subplots(len(rows), len(conditions), figsize=(2.2 * len(conditions), 2.4 * len(rows)),
                             squeeze=False)
    for r, (f, entry) in enumerate(rows):
        k = entry.attribute_index(attribute, data)
        batch = np.stack([originals[f], *(covered[n][f] for n in OCCLUSIONS)])
        heats = heatmap(entry.explainer(composite)(batch, k).relevance)
        scores = entry.rated_scores(batch, k)
        scale = symmetric_scale(heats)
        for c, condition in enumerate(conditions):
            ax = axes[r, c]
            ax.imshow(overlay(batch[c], heats[c], scale))
            change = "" if c == 0 else f" ({scores[c] - scores[0]:+.1f})"
            ax.set_title(f"{condition.replace('_', ' ')}: {scores[c]:.1f}{change}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(f"face {data.ids[faces[f][0]]}\n{entry.label}", fontsize=7)
    fig.suptitle(f"{attribute} score when covering regions (LRP {composite}; red raises, blue lowers the score)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
