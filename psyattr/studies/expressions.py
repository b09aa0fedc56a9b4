"""Expression pairs (paper Sec. 3.4, Fig. 4): the same person happy and sad, heatmaps side by side."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from psyattr.data.images import IMAGE_SUFFIXES, ImageError
from psyattr.faces.alignment import aligned_model_input
from psyattr.faces.relevance import region_shares
from psyattr.lrp.heatmap import heatmap, render, symmetric_scale
from psyattr.plots import plt
from psyattr.studies.common import StudyModel, write_summary

log = logging.getLogger(__name__)

SHARE_REGIONS = ("mouth", "cheeks", "eyes", "eyebrows", "nose")
_YALE = re.compile(r"^(subject\d+)\.(happy|sad)(\.\w+)?$", re.IGNORECASE)
# KDEF: <session A|B><gender F|M><id 01-35><expression><angle>.JPG, e.g. AF01HAS.JPG (HA happy, SA sad, S straight)
_KDEF = re.compile(r"^([AB][FM]\d\d)(HA|SA)S\.jpe?g$", re.IGNORECASE)


def find_expression_pairs(folder: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """(person, happy image, sad image) for every person with both: Yale (`subjectNN.happy.gif`) or KDEF names."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"expression folder not found: {root}")
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        yale, kdef = _YALE.match(path.name), _KDEF.match(path.name)
        if yale and (path.suffix.lower() in IMAGE_SUFFIXES or not path.suffix or yale.group(3) is None):
            found.setdefault(yale.group(1), {})[yale.group(2).lower()] = path
        elif kdef:
            state = "happy" if kdef.group(2).upper() == "HA" else "sad"
            found.setdefault(kdef.group(1).upper(), {})[state] = path
    pairs = [(person, states["happy"], states["sad"]) for person, states in sorted(found.items())
             if {"happy", "sad"} <= set(states)]
    if not pairs:
        raise ValueError(f"no happy/sad pairs in {root}: expected Yale names (subject01.happy.gif, subject01.sad.gif) "
                         "or KDEF names (AF01HAS.JPG, AF01SAS.JPG)")
    return pairs


def expression_study(models: Sequence[StudyModel], folder: str | os.PathLike, out_dir: str | os.PathLike,
                     attribute: str = "happy", composite: str = "alpha2beta1", shown: int = 5) -> dict[str, Any]:
    """Scores, heatmaps and the relevance share per face region of every happy/sad pair, for each model."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = find_expression_pairs(folder)
    usable, skipped, inputs = [], [], []
    for person, happy, sad in pairs:
        # Each photo is aligned to the framing the models learned from (eyes and mouth where OMI has them).
        try:
            aligned = (aligned_model_input(happy), aligned_model_input(sad))
        except (ImageError, OSError) as err:
            skipped.append(f"{person} ({err})")
            continue
        if None in aligned:
            skipped.append(f"{person} (no face found)")
            continue
        usable.append((person, happy, sad, (aligned[0][1], aligned[1][1])))
        inputs.append((aligned[0][0], aligned[1][0]))
    if skipped:
        log.warning("left out %d pair(s): %s", len(skipped), "; ".join(skipped))
    if not usable:
        raise ValueError(f"no usable happy/sad pair in {folder}")
    happy_images = np.stack([happy for happy, _ in inputs])
    sad_images = np.stack([sad for _, sad in inputs])
    results: dict[str, Any] = {"attribute": attribute, "pairs": len(usable), "skipped": skipped, "models": {}}
    heat_by_model = {}
    table = ["| model | state | mean score | " + " | ".join(f"{r} share" for r in SHARE_REGIONS) + " |",
             "|---|---|---:|" + "---:|" * len(SHARE_REGIONS)]
    for entry in models:
        k = entry.attribute_index(attribute)
        explainer = entry.explainer(composite)
        model_result = {}
        heats = {}
        for state, batch, index in (("happy", happy_images, 0), ("sad", sad_images, 1)):
            heats[state] = heatmap(explainer(batch, k).relevance)
            scores = entry.rated_scores(batch, k)
            shares = [region_shares(h, regions[index]) for h, (_, _, _, regions) in zip(heats[state], usable)]
            mean_shares = {r: float(np.nanmean([s[r] for s in shares])) for r in SHARE_REGIONS}
            model_result[state] = {"mean_score": float(scores.mean()), "scores": scores.round(3).tolist(),
                                   "shares": mean_shares}
            table.append(f"| {entry.label} | {state} | {scores.mean():.2f} | "
                         + " | ".join(f"{mean_shares[r]:.1%}" for r in SHARE_REGIONS) + " |")
        model_result["happier_when_happy"] = float(np.mean(
            np.asarray(model_result["happy"]["scores"]) > np.asarray(model_result["sad"]["scores"])))
        results["models"][entry.label] = model_result
        heat_by_model[entry.label] = heats
    figure = plot_pairs(models, usable[:shown], happy_images[:shown], sad_images[:shown], heat_by_model, results,
                        out_dir / "expression_pairs.png", attribute)
    write_summary(
        out_dir, "The same person happy and sad",
        f"{len(usable)} people photographed happy and sad (same session and light, {Path(folder).name}); the "
        f"{attribute} score of each model and the share of positive relevance (LRP {composite}) in each face region. "
        "Each photo is aligned to OMI's framing (eyes and mouth where the training faces have them) and its regions come "
        "from the face-mesh detector." + (f" Left out: {'; '.join(skipped)}." if skipped else ""),
        [(figure.name, f"Happy (left) and sad (right) faces of the same people with each model's {attribute} "
                       "heatmap, all on one colour scale; titles give the score.")],
        "\n".join(table), numbers=results)
    return results


def plot_pairs(models, usable, happy_images, sad_images, heat_by_model, results, path: Path, attribute: str) -> Path:
    """Rows: people; columns: happy face, its heatmap per model, sad face, its heatmap per model."""
    labels = [m.label for m in models]
    scale = symmetric_scale(*[h for heats in heat_by_model.values() for h in heats.values()])
    columns = 2 * (1 + len(labels))
    fig, axes = plt.subplots(len(usable), columns, figsize=(1.9 * columns, 2.1 * len(usable) + 0.5), squeeze=False)
    for r, (person, *_rest) in enumerate(usable):
        for block, (state, images) in enumerate((("happy", happy_images), ("sad", sad_images))):
            base = block * (1 + len(labels))
            axes[r, base].imshow(images[r].astype(np.uint8))
            axes[r, base].set_title(f"{person} {state}", fontsize=7)
            for j, label in enumerate(labels):
                score = results["models"][label][state]["scores"][r]
                axes[r, base + 1 + j].imshow(render(heat_by_model[label][state][r], scale))
                axes[r, base + 1 + j].set_title(f"{label}: {score:.1f}", fontsize=6)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{attribute}: happy vs sad, one colour scale (±{scale:.3g}); red raises the score", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
