"""Base-model comparison (paper Sec. 3.2-3.3): where the age- and gender-based models look, and how they learn."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from psyattr.faces.relevance import region_shares, relevance_spread
from psyattr.plots import plt
from psyattr.studies.inputs import HeldOutFaces, StudyInputs
from psyattr.studies.models import StudyModel
from psyattr.studies.summary import Figure, StudyResult

REGIONS = ("mouth", "cheeks", "eyes", "eyebrows", "nose", "face")


def learning_curve(entry: StudyModel, column: str) -> list[dict[str, Any]]:
    """Per epoch: train and test MAE of `column` ([0, 1] scale) from the model's run (empty without one)."""
    return [{"epoch": h["epoch"], "train_mae": h.get(f"train_mae_{column}", h.get("train_mae")),
             "test_mae": h.get(f"test_mae_{column}", h.get("test_mae"))} for h in entry.history]


def epochs_to_reach(history: list[dict[str, Any]], share: float = 0.9) -> int | None:
    """The first epoch whose test MAE has made `share` of the run's total improvement (None without history)."""
    errors = [h["test_mae"] for h in history if h.get("test_mae") is not None]
    if len(errors) < 2:
        return None
    start, best = errors[0], min(errors)
    if start <= best:
        return 1
    target = start - share * (start - best)
    return next(i + 1 for i, e in enumerate(errors) if e <= target)


@dataclasses.dataclass(kw_only=True)
class BaseComparison:
    """One model's side of the comparison."""

    label: str
    framing: str
    shares: dict[str, float]  # mean share of positive relevance per region
    spread: float  # share of the pixels that hold half the positive relevance
    mae: float  # on the rating scale
    mae_faces: int  # the faces the MAE is over: the run's whole test half, or the faces explained here
    epochs_to_90: int | None
    history: list[dict[str, Any]]


@dataclasses.dataclass(kw_only=True)
class ComparisonResult(StudyResult):
    """Relevance per region, spread, error and learning speed of each model, and the verdict."""

    study = "comparison"
    attribute: str
    faces: HeldOutFaces
    ids: list[str]
    skipped: list[str]
    scale: tuple[float, float]
    models: dict[str, BaseComparison]
    verdict: str = ""

    @property
    def count(self) -> int:
        """How many faces were explained."""
        return len(self.ids)

    def table_markdown(self) -> str:
        table = ["| model | test MAE (rating scale) | epochs to 90% of the gain | spread (pixels for half the relevance) | "
                 + " | ".join(REGIONS) + " |", "|---|---:|---:|---:|" + "---:|" * len(REGIONS)]
        for m in self.models.values():
            table.append(f"| {m.label} | {m.mae:.2f} | {m.epochs_to_90 or '-'} | {m.spread:.1%} | "
                         + " | ".join(f"{m.shares[r]:.1%}" for r in REGIONS) + " |")
        return "\n".join(table)

    def numbers(self) -> dict[str, Any]:
        return {"attribute": self.attribute, "faces": self.count, "test_faces": self.faces.to_summary(),
                "skipped": self.skipped, "verdict": self.verdict,
                "models": {m.label: dataclasses.asdict(m) for m in self.models.values()}}

    def lines(self) -> list[str]:
        return [*(f"{m.label:24s} MAE {m.mae:.2f}  spread {m.spread:.1%}  "
                  + "  ".join(f"{r} {v:.1%}" for r, v in m.shares.items()) for m in self.models.values()),
                self.verdict]


def comparison_study(inputs: StudyInputs, out_dir: str | os.PathLike, *, attribute: str = "happy",
                     composite: str = "alpha2beta1", limit: int | None = None) -> ComparisonResult:
    """Relevance share per face region and its spread, test MAE and learning speed of each base's model."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = inputs.data
    chosen, usable = inputs.faces(limit, regions=True)
    column = data.resolve(attribute)
    truth = data.ratings[column][usable.indices]
    models = {}
    for entry in inputs.models:
        k = entry.attribute_index(attribute, data)
        images = usable.images(entry)
        heats = entry.explainer(composite)(images, k).heatmap
        shares = [region_shares(h, r) for h, r in zip(heats, usable.regions(entry))]
        scores = entry.rated_scores(images, k)
        history = learning_curve(entry, column)
        # The run's own test MAE covers its whole test half (as Table 1 does); the faces explained here are fewer.
        recorded = entry.recorded_test_mae(column)
        mae, mae_faces = ((recorded[0] * (data.scale[1] - data.scale[0]), recorded[1]) if recorded
                          else (float(np.nanmean(np.abs(scores - truth))), len(usable)))
        models[entry.label] = BaseComparison(
            label=entry.label, framing=entry.framing.name,
            shares={name: float(np.nanmean([s[name] for s in shares])) for name in REGIONS},
            spread=float(np.nanmean([relevance_spread(h) for h in heats])), mae=mae, mae_faces=mae_faces,
            epochs_to_90=epochs_to_reach(history), history=history)
    result = ComparisonResult(out_dir=out_dir, text="", figures=(), attribute=attribute, faces=chosen, ids=usable.ids,
                              skipped=usable.skipped, scale=data.scale, models=models)
    result.verdict = verdict(result)
    figure = plot_comparison(result, out_dir / "base_comparison.png")
    note = data.note(attribute)
    result.text = (
        f"{attribute} ({column}) on {len(usable)} test faces of {data.name}: the share of positive relevance (LRP "
        f"{composite}) per face region, how spread out the relevance is (the share of pixels that hold half of it; "
        "larger means more of the face is used), the test error and how fast each model learned. "
        f"{chosen.describe()} {inputs.framing_text()} Verdict: {result.verdict}" + (f" {note}." if note else ""))
    result.figures = (Figure(figure.name, f"Left: relevance share per face region; right: test MAE per epoch. "
                                          f"{attribute}, {len(usable)} test faces of {data.name}."),)
    result.write_summary()
    return result


def verdict(result: ComparisonResult) -> str:
    """One or two sentences: which base's model predicts better, learns faster and uses more of the face."""
    models, scale = result.models, result.scale
    if len(models) < 2:
        return "only one model: nothing to compare."
    best = min(models, key=lambda label: models[label].mae)
    spread = max(models, key=lambda label: models[label].spread)
    speeds = {label: m.epochs_to_90 for label, m in models.items() if m.epochs_to_90}
    fastest = min(speeds, key=speeds.get) if len(speeds) == len(models) else None
    others = [label for label in models if label != best]
    gap = min(models[o].mae for o in others) - models[best].mae
    text = (f"the {best} model predicts the test ratings best (MAE {models[best].mae:.2f} vs "
            f"{min(models[o].mae for o in others):.2f} on {scale[0]:g}..{scale[1]:g}, "
            f"{models[best].mae_faces} test faces")
    text += ", a small difference)" if gap < 0.01 * (scale[1] - scale[0]) else ")"
    if fastest:
        text += f"; the {fastest} model learns fastest ({speeds[fastest]} epochs to 90% of its gain)"
    runner_up = max(m.spread for label, m in models.items() if label != spread)
    text += (f"; the {spread} model spreads its relevance most widely (half of it on {models[spread].spread:.1%} "
             f"of the pixels vs {runner_up:.1%}).")
    return text[0].upper() + text[1:]


def plot_comparison(result: ComparisonResult, path: Path) -> Path:
    """Region shares (bars) and learning curves (test MAE per epoch) of each model side by side."""
    labels = list(result.models)
    scale = result.scale
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / max(len(labels), 1)
    for j, label in enumerate(labels):
        m = result.models[label]
        left.bar(np.arange(len(REGIONS)) + (j - (len(labels) - 1) / 2) * width, [m.shares[r] for r in REGIONS],
                 width, label=label)
        if m.history and m.history[0]["test_mae"] is not None:
            span = scale[1] - scale[0]
            right.plot([h["epoch"] for h in m.history], [h["test_mae"] * span for h in m.history], label=label)
    left.set_xticks(range(len(REGIONS)), REGIONS)
    left.set_ylabel("share of positive relevance")
    left.set_title(f"{result.attribute}: where the relevance lies ({result.count} test faces)", fontsize=9)
    left.legend(fontsize=8)
    right.set_xlabel("epoch")
    right.set_ylabel(f"test MAE ({scale[0]:g}..{scale[1]:g})")
    right.set_title("learning curves", fontsize=9)
    if right.lines:
        right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
