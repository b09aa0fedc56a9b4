"""Expression pairs (paper Sec. 3.4, Fig. 4): the same person happy and sad, heatmaps side by side."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from psyattr.data.images import IMAGE_SUFFIXES
from psyattr.faces.relevance import region_shares
from psyattr.lrp.heatmap import overlay, render, symmetric_scale
from psyattr.plots import plt
from psyattr.studies.inputs import FramedPhotos, StudyInputs
from psyattr.studies.summary import Figure, StudyResult

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


@dataclasses.dataclass(kw_only=True)
class StateScores:
    """One model on one expression: the score of each person and the mean relevance share per region."""

    scores: np.ndarray  # (pairs,) on the rating scale
    shares: dict[str, float]

    @property
    def mean_score(self) -> float:
        """The mean score over the people."""
        return float(np.mean(self.scores))


@dataclasses.dataclass(kw_only=True)
class ModelExpressions:
    """One model's scores and relevance shares, happy and sad."""

    label: str
    framing: str
    happy: StateScores
    sad: StateScores

    @property
    def happier_when_happy(self) -> float:
        """The share of people the model scores higher happy than sad."""
        return float(np.mean(self.happy.scores > self.sad.scores))


@dataclasses.dataclass(kw_only=True)
class ExpressionResult(StudyResult):
    """Each model on the happy and sad photos of the same people."""

    study = "expressions"
    attribute: str
    folder: Path
    people: list[str]
    skipped: list[str]
    notes: list[str]
    composite: str
    models: dict[str, ModelExpressions]

    @property
    def pairs(self) -> int:
        """How many happy/sad pairs were used."""
        return len(self.people)

    def table_markdown(self) -> str:
        table = ["| model | state | mean score | " + " | ".join(f"{r} share" for r in SHARE_REGIONS) + " |",
                 "|---|---|---:|" + "---:|" * len(SHARE_REGIONS)]
        for m in self.models.values():
            for state, result in (("happy", m.happy), ("sad", m.sad)):
                table.append(f"| {m.label} | {state} | {result.mean_score:.2f} | "
                             + " | ".join(f"{result.shares[r]:.1%}" for r in SHARE_REGIONS) + " |")
        return "\n".join(table)

    def numbers(self) -> dict[str, Any]:
        def state(result: StateScores) -> dict[str, Any]:
            return {"mean_score": result.mean_score, "scores": result.scores.round(3), "shares": result.shares}

        return {"attribute": self.attribute, "pairs": self.pairs, "people": self.people, "skipped": self.skipped,
                "notes": self.notes, "models": {m.label: {"framing": m.framing, "happy": state(m.happy),
                                                          "sad": state(m.sad),
                                                          "happier_when_happy": m.happier_when_happy}
                                                for m in self.models.values()}}

    def lines(self) -> list[str]:
        lines = []
        for m in self.models.values():
            for name, result in (("happy", m.happy), ("sad", m.sad)):
                shares = result.shares
                lines.append(f"{m.label:24s} {name:5s} score {result.mean_score:6.2f}  mouth {shares['mouth']:.1%}  "
                             f"eyes {shares['eyes']:.1%}  cheeks {shares['cheeks']:.1%}  "
                             f"eyebrows {shares['eyebrows']:.1%}")
        return [*lines, f"{self.pairs} pairs; figure and table in {self.out_dir}"]


def expression_study(inputs: StudyInputs, out_dir: str | os.PathLike, *, pairs: str | os.PathLike,
                     attribute: str = "happy", composite: str = "alpha2beta1", shown: int = 5) -> ExpressionResult:
    """Scores, heatmaps and the relevance share per face region of every happy/sad pair in `pairs`, for each model.

    Each model sees each photo framed by its own framing (faces found by the face-mesh detector); a pair with a
    photo that cannot be framed is left out, named with the reason.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    found = find_expression_pairs(pairs)
    photos = FramedPhotos([f"{person} {state}" for person, *_ in found for state in ("happy", "sad")],
                          [path for _, happy, sad in found for path in (happy, sad)])
    usable, skipped = [], []
    for k, (person, *_) in enumerate(found):
        reasons = [why for why in (photos.reason(inputs.framings, p, regions=True) for p in (2 * k, 2 * k + 1)) if why]
        if reasons:
            skipped.append(f"{person} ({'; '.join(reasons)})")
        else:
            usable.append(k)
    if skipped:
        log.warning("left out %d pair(s): %s", len(skipped), "; ".join(skipped))
    if not usable:
        raise ValueError(f"no usable happy/sad pair in {pairs}: {'; '.join(skipped[:3])}")
    people = [found[k][0] for k in usable]
    positions = {"happy": [2 * k for k in usable], "sad": [2 * k + 1 for k in usable]}
    models, heats, images = {}, {}, {}
    for entry in inputs.models:
        k = entry.attribute_index(attribute)
        explainer = entry.explainer(composite)
        states = {}
        for state, where in positions.items():
            batch = photos.inputs(entry.framing, where)
            heat = explainer(batch, k).heatmap
            regions = photos.regions(entry.framing, where)
            shares = [region_shares(h, r) for h, r in zip(heat, regions)]
            states[state] = StateScores(scores=entry.rated_scores(batch, k),
                                        shares={r: float(np.nanmean([s[r] for s in shares])) for r in SHARE_REGIONS})
            heats[entry.label, state] = heat[:shown]
            images[entry.label, state] = batch[:shown]
        models[entry.label] = ModelExpressions(label=entry.label, framing=entry.framing.name, **states)
    notes = sorted({n for f in inputs.framings for n in photos.notes(f, [p for w in positions.values() for p in w])})
    text = (f"{len(people)} people photographed happy and sad (same session and light, {Path(pairs).name}); the "
            f"{attribute} score of each model and the share of positive relevance (LRP {composite}) in each face "
            "region. " + inputs.framing_text() + " Faces and their regions come from the face-mesh detector."
            + (f" Left out: {'; '.join(skipped)}." if skipped else "")
            + (f" Noted while framing: {'; '.join(notes)}." if notes else ""))
    result = ExpressionResult(out_dir=out_dir, text=text, figures=(), attribute=attribute, folder=Path(pairs),
                              people=people, skipped=skipped, notes=notes, composite=composite, models=models)
    figure = plot_pairs(result, heats, images, len(inputs.framings) > 1, out_dir / "expression_pairs.png")
    result.figures = (Figure(figure.name, f"Happy (left) and sad (right) faces of the same people with each model's "
                                          f"{attribute} heatmap, all on one colour scale; titles give the score."),)
    result.write_summary()
    return result


def plot_pairs(result: ExpressionResult, heats: dict[tuple[str, str], np.ndarray],
               images: dict[tuple[str, str], np.ndarray], overlaid: bool, path: Path) -> Path:
    """Rows: people; columns: happy face, its heatmap per model, sad face, its heatmap per model.

    With `overlaid` (models framed differently), each heatmap lies over the face as that model saw it.
    """
    labels = list(result.models)
    scale = symmetric_scale(*heats.values())
    count = len(next(iter(heats.values())))
    columns = 2 * (1 + len(labels))
    fig, axes = plt.subplots(count, columns, figsize=(1.9 * columns, 2.1 * count + 0.5), squeeze=False)
    for r, person in enumerate(result.people[:count]):
        for block, state in enumerate(("happy", "sad")):
            base = block * (1 + len(labels))
            axes[r, base].imshow(images[labels[0], state][r].astype(np.uint8))
            axes[r, base].set_title(f"{person} {state}", fontsize=7)
            for j, label in enumerate(labels):
                score = getattr(result.models[label], state).scores[r]
                heat = heats[label, state][r]
                shown = overlay(images[label, state][r], heat, scale) if overlaid else render(heat, scale)
                axes[r, base + 1 + j].imshow(shown)
                axes[r, base + 1 + j].set_title(f"{label}: {score:.1f}", fontsize=6)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{result.attribute}: happy vs sad, one colour scale (±{scale:.3g}); red raises the score", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
