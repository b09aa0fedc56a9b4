"""Base-model comparison (paper Sec. 3.2-3.3): where the age- and gender-based models look, and how they learn."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from psyattr.data.rated import RatedFaces
from psyattr.faces import regions_for_item
from psyattr.faces.relevance import region_shares, relevance_spread
from psyattr.lrp.heatmap import heatmap
from psyattr.plots import plt
from psyattr.studies.common import StudyModel, model_inputs, write_summary

REGIONS = ("mouth", "cheeks", "eyes", "eyebrows", "nose", "face")


def _history(entry: StudyModel, column: str) -> list[dict[str, Any]]:
    """Per epoch: train and test MAE of `column` ([0, 1] scale) from the model's run, if it has one."""
    state_file = entry.run_dir / "state.json"
    history = json.loads(state_file.read_text()).get("history", []) if state_file.exists() else []
    return [{"epoch": h["epoch"], "train_mae": h.get(f"train_mae_{column}", h.get("train_mae")),
             "test_mae": h.get(f"test_mae_{column}", h.get("test_mae"))} for h in history]


def _run_test_mae(entry: StudyModel, column: str) -> tuple[float, int] | None:
    """The test MAE ([0, 1] scale) and test-face count the model's run recorded for `column`, if it has a run."""
    metrics_file = entry.run_dir / "metrics.json"
    if not metrics_file.exists():
        return None
    metrics = json.loads(metrics_file.read_text())
    found = metrics.get("attributes", {}).get(column)
    return (float(found["mae"]), int(found["count"])) if found else None


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


def comparison_study(models: Sequence[StudyModel], data: RatedFaces, attribute: str, indices: Sequence[int],
                     out_dir: str | os.PathLike, composite: str = "alpha2beta1") -> dict[str, Any]:
    """Relevance share per face region and its spread, test MAE and learning speed of each base's model."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images, kept = model_inputs([data.paths[i] for i in indices])
    regions = [regions_for_item(data, indices[k]) for k in kept]
    have = [i for i, r in enumerate(regions) if r is not None]
    images = images[have]
    regions = [regions[i] for i in have]
    column = data.resolve(attribute)
    truth = data.ratings[column][[indices[kept[i]] for i in have]]
    results: dict[str, Any] = {"attribute": attribute, "faces": len(have), "models": {}}
    for entry in models:
        k = entry.attribute_index(attribute, data)
        heats = heatmap(entry.explainer(composite)(images, k).relevance)
        shares = [region_shares(h, r) for h, r in zip(heats, regions)]
        scores = entry.rated_scores(images, k)
        history = _history(entry, column)
        # The run's own test MAE covers its whole test half (as Table 1 does); the faces explained here are fewer.
        recorded = _run_test_mae(entry, column)
        mae, mae_faces = ((recorded[0] * (data.scale[1] - data.scale[0]), recorded[1]) if recorded
                          else (float(np.mean(np.abs(scores - truth))), len(have)))
        results["models"][entry.label] = {
            "shares": {name: float(np.nanmean([s[name] for s in shares])) for name in REGIONS},
            "spread": float(np.nanmean([relevance_spread(h) for h in heats])),
            "mae": mae,
            "mae_faces": mae_faces,
            "epochs_to_90": epochs_to_reach(history),
            "history": history,
        }
    results["verdict"] = verdict(results, data.scale)
    figure = plot_comparison(results, out_dir / "base_comparison.png", attribute, data.scale)
    labels = list(results["models"])
    table = ["| model | test MAE (rating scale) | epochs to 90% of the gain | spread (pixels for half the relevance) | "
             + " | ".join(REGIONS) + " |", "|---|---:|---:|---:|" + "---:|" * len(REGIONS)]
    for label in labels:
        m = results["models"][label]
        table.append(f"| {label} | {m['mae']:.2f} | {m['epochs_to_90'] if m['epochs_to_90'] else '-'} | "
                     f"{m['spread']:.1%} | " + " | ".join(f"{m['shares'][r]:.1%}" for r in REGIONS) + " |")
    note = data.note(attribute)
    write_summary(
        out_dir, "Which base model suits the transfer",
        f"{attribute} ({column}) on {len(have)} test faces of {data.name}: the share of positive relevance (LRP "
        f"{composite}) per face region, how spread out the relevance is (the share of pixels that hold half of it; "
        "larger means more of the face is used), the test error and how fast each model learned. "
        f"Verdict: {results['verdict']}" + (f" {note}." if note else ""),
        [(figure.name, f"Left: relevance share per face region; right: test MAE per epoch. {attribute}, "
                       f"{len(have)} test faces of {data.name}.")],
        "\n".join(table), numbers=results)
    return results


def verdict(results: dict[str, Any], scale: tuple[float, float]) -> str:
    """One or two sentences: which base's model predicts better, learns faster and uses more of the face."""
    models = results["models"]
    if len(models) < 2:
        return "only one model: nothing to compare."
    best = min(models, key=lambda label: models[label]["mae"])
    spread = max(models, key=lambda label: models[label]["spread"])
    speeds = {label: m["epochs_to_90"] for label, m in models.items() if m["epochs_to_90"]}
    fastest = min(speeds, key=speeds.get) if len(speeds) == len(models) else None
    others = [label for label in models if label != best]
    gap = min(models[o]["mae"] for o in others) - models[best]["mae"]
    text = (f"the {best} model predicts the test ratings best (MAE {models[best]['mae']:.2f} vs "
            f"{min(models[o]['mae'] for o in others):.2f} on {scale[0]:g}..{scale[1]:g}, "
            f"{models[best].get('mae_faces', results['faces'])} test faces")
    text += ", a small difference)" if gap < 0.01 * (scale[1] - scale[0]) else ")"
    if fastest:
        text += f"; the {fastest} model learns fastest ({speeds[fastest]} epochs to 90% of its gain)"
    runner_up = max(m["spread"] for label, m in models.items() if label != spread)
    text += (f"; the {spread} model spreads its relevance most widely (half of it on {models[spread]['spread']:.1%} "
             f"of the pixels vs {runner_up:.1%}).")
    return text[0].upper() + text[1:]


def plot_comparison(results: dict[str, Any], path: Path, attribute: str, scale: tuple[float, float]) -> Path:
    """Region shares (bars) and learning curves (test MAE per epoch) of each model side by side."""
    labels = list(results["models"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / max(len(labels), 1)
    for j, label in enumerate(labels):
        shares = [results["models"][label]["shares"][r] for r in REGIONS]
        left.bar(np.arange(len(REGIONS)) + (j - (len(labels) - 1) / 2) * width, shares, width, label=label)
        history = results["models"][label]["history"]
        if history and history[0]["test_mae"] is not None:
            span = scale[1] - scale[0]
            right.plot([h["epoch"] for h in history], [h["test_mae"] * span for h in history], label=label)
    left.set_xticks(range(len(REGIONS)), REGIONS)
    left.set_ylabel("share of positive relevance")
    left.set_title(f"{attribute}: where the relevance lies ({results['faces']} test faces)", fontsize=9)
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
