"""The paper's experiment, 2 bases x 2 modes x 4 attributes, with ridge mode beside it: Table 1 (test MAE, r and the
raters' ceiling) and Fig. 3 (learning curves)."""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from psyattr.checkpoints import atomic_write_text, read_state
from psyattr.runs import Run
from psyattr.data.rated import PAPER_ATTRIBUTES, RatedFaces
from psyattr.train import DEFAULT_EPOCHS, TrainConfig, train_regressor

log = logging.getLogger(__name__)

BASES = ("age", "gender")
MODES = ("ridge", "dense", "full")
# A full-mode fold trains the whole net for minutes: cross-validation runs the fast modes unless asked for more.
CV_MODES = ("ridge", "dense")


def default_modes(cv: int | None) -> tuple[str, ...]:
    """The modes a grid trains when none are named: all three on the 50/50 split, ridge and dense under --cv."""
    return CV_MODES if cv else MODES


def run_name(base: str, mode: str, attribute: str) -> str:
    """The run folder name of one grid cell."""
    return f"{_base_label(base)}_{mode}_{attribute}"


def run_grid(data: RatedFaces, out_dir: str | os.PathLike, data_spec: dict[str, Any],
             bases: Sequence[str] = BASES, modes: Sequence[str] | None = None,
             attributes: Sequence[str] = PAPER_ATTRIBUTES, epochs: dict[str, int] | None = None, seed: int = 0,
             cache_dir: str | os.PathLike | None = None, progress: bool = True, joint: bool = False,
             framing: str | None = None, cv: int | None = None) -> list[Path]:
    """Train every (base, mode, attribute) model not finished yet (resuming partial runs); return the run dirs.

    With `joint`, each (base, mode) gets one model scoring all attributes at once instead of one per attribute.
    `framing` frames the photos (None: each base net's own framing). With `cv`, each cell is a `cv`-fold
    cross-validation (a folder of fold runs) instead of one run on the 50/50 split.
    """
    from psyattr.crossval import check_folds, cross_validate

    out_dir = Path(out_dir)
    modes = tuple(modes or default_modes(cv))
    epochs = {**DEFAULT_EPOCHS, **(epochs or {})}
    for attribute in attributes:
        data.resolve(attribute)  # unknown attributes fail before any training starts
        if cv is not None:
            check_folds(data, [data.resolve(attribute)], cv)  # and so do folds that cannot split the faces
    runs = []
    groups = [list(attributes)] if joint else [[a] for a in attributes]
    for mode in modes:
        for base in bases:
            for group in groups:
                run_dir = out_dir / run_name(base, mode, "joint" if joint else group[0])
                runs.append(run_dir)
                # Full mode's warm-up is dense mode's recipe, for as many epochs as dense mode's cells get.
                config = TrainConfig(base, mode, group, epochs=epochs[mode], seed=seed, framing=framing,
                                     warmup_epochs=epochs["dense"])
                if cv is not None:
                    log.info("cross-validating %s (%d folds, %d epochs each)", run_dir.name, cv, epochs[mode])
                    cross_validate(data, run_dir, config, cv, data_spec, cache_dir, progress)
                    continue
                state = read_state(run_dir)
                if state is None and config.mode == "ridge" and Run.is_run(run_dir) and Run.open(run_dir).finished:
                    Run.open(run_dir).check_seed(seed)  # solved in one step: a finished run has no epoch state
                    log.info("%s is complete, skipped", run_dir.name)
                    continue
                if state and state["identity"].get("seed", seed) != seed:
                    raise ValueError(f"{run_dir} holds a run with seed {state['identity']['seed']}, not {seed}: "
                                     "give another --out, or the same --seed to finish that grid")
                if state and state["epoch"] >= epochs[mode] and (run_dir / "metrics.json").exists():
                    log.info("%s is complete, skipped", run_dir.name)
                    continue
                log.info("training %s (%d epochs)", run_dir.name, epochs[mode])
                train_regressor(data, run_dir, config, data_spec, resume=state is not None, cache_dir=cache_dir,
                                progress=progress)
    return runs


def collect_runs(out_dir: str | os.PathLike) -> list[Run]:
    """Every finished training run directly under `out_dir`, by folder name."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"grid folder not found: {out_dir}")
    return [Run.open(path) for path in sorted(out_dir.iterdir())
            if path.is_dir() and Run.is_run(path) and Run.open(path).finished]


def _base_label(base: str) -> str:
    return base.split(":")[0] if base.split(":")[0] in BASES else Path(base).stem


def table_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per (run, attribute): the numbers of Table 1."""
    rows = []
    for run in runs:
        config, metrics = run.config, run.metrics
        framing = (metrics.get("framing") or run.framing or {})
        framing = framing.get("name", "?") if isinstance(framing, dict) else str(framing)
        for requested, column in zip(config["attributes"], config["columns"]):
            m = metrics["attributes"][column]
            ci, ceiling = m.get("ci", {}), m.get("ceiling") or {}
            nan = float("nan")
            rows.append({
                "attribute": requested, "column": column, "base": _base_label(config["base"]), "mode": config["mode"],
                "framing": framing, "epochs": len(run.history) or config["epochs"], "seed": config["seed"],
                "protocol": metrics.get("protocol", "50/50 split"),
                "mae_1_9": m["mae_1_9"], "mae_native": m["mae_native"], "pearson_r": m["pearson_r"],
                "pearson_r_low": ci.get("pearson_r", [nan, nan])[0], "pearson_r_high": ci.get("pearson_r", [nan, nan])[1],
                "r2": m.get("r2", nan), "spearman": m.get("spearman", nan),
                "ceiling_r": ceiling.get("r", nan), "r_fraction": m.get("r_fraction", nan),
                "r_fraction_low": ci.get("r_fraction", [nan, nan])[0] if ci.get("r_fraction") else nan,
                "r_fraction_high": ci.get("r_fraction", [nan, nan])[1] if ci.get("r_fraction") else nan,
                "baseline_mae_1_9": m["baseline_mae_1_9"], "baseline_mae_native": m["baseline_mae_native"],
                "beats_baseline": m["mae"] < m["baseline_mae"], "test_count": m["count"],
            })
    order = {a: i for i, a in enumerate(PAPER_ATTRIBUTES)}
    return sorted(rows, key=lambda r: (order.get(r["attribute"], 99), r["attribute"], r["base"], r["mode"]))


def write_table1(runs: list[Run], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write Table 1 as Markdown and CSV; return both paths."""
    out_dir = Path(out_dir)
    rows = table_rows(runs)
    if not rows:
        raise ValueError(f"no finished runs under {out_dir}: train some first")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    csv_path = out_dir / "table1.csv"
    atomic_write_text(csv_path, buffer.getvalue())
    scale = runs[0].metrics["scale"]
    notes = sorted({note for run in runs for note in run.config.get("notes", [])})
    protocols = sorted({r["protocol"] for r in rows})
    faces = (f"{rows[0]['test_count']} test faces" if protocols == ["50/50 split"]
             else f"{' and '.join(protocols)}: every face predicted once by a model that did not train on it")
    lines = [
        f"# Table 1: test MAE of the fine-tuned models ({runs[0].metrics['dataset']}, {faces}, seed {rows[0]['seed']})",
        "",
        f"MAE on the paper's 1..9 scale and on the data set's own {scale[0]:g}..{scale[1]:g} scale; baseline: always "
        "predicting the training mean (lower is better). Pearson r with its bootstrap 95 % interval over the test "
        "faces, R^2 and Spearman of the predictions against the mean ratings. Ceiling: the raters' own split-half r "
        "on the same faces (two random halves of the raters, 50 splits); r / ceiling 1.0 means the model predicts the "
        "mean rating as well as half of the raters do.",
        "",
        "| attribute | base | mode | framing | epochs | MAE (1-9) | MAE (native) | Pearson r [95 % CI] | R^2 | Spearman "
        "| ceiling | r / ceiling [95 % CI] | baseline MAE (1-9) | beats baseline |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        label = r["attribute"] if r["attribute"] == r["column"] else f"{r['attribute']} ({r['column']})"
        fraction = (f"{r['r_fraction']:.2f} [{r['r_fraction_low']:.2f}, {r['r_fraction_high']:.2f}]"
                    if r["r_fraction"] == r["r_fraction"] else "n/a")
        ceiling = f"{r['ceiling_r']:.3f}" if r["ceiling_r"] == r["ceiling_r"] else "n/a"
        lines.append(f"| {label} | {r['base']} | {r['mode']} | {r['framing']} | {r['epochs']} | {r['mae_1_9']:.3f} | "
                     f"{r['mae_native']:.2f} | {r['pearson_r']:.3f} [{r['pearson_r_low']:.3f}, {r['pearson_r_high']:.3f}] | "
                     f"{r['r2']:.3f} | {r['spearman']:.3f} | {ceiling} | {fraction} | {r['baseline_mae_1_9']:.3f} | "
                     f"{'yes' if r['beats_baseline'] else 'NO'} |")
    if notes:
        lines += ["", *[f"Note: {n}." for n in notes]]
    md_path = out_dir / "table1.md"
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    return md_path, csv_path


def fig3_panels(runs: list[Run]) -> dict[str, list[tuple[str, list[int], list[float], list[float]]]]:
    """Fig. 3's content: per attribute panel title, each run's (label, epochs, train MAE, test MAE) on 1..9."""
    by_attribute: dict[str, list[Run]] = {}
    for run in runs:
        for requested in run.config["attributes"]:
            by_attribute.setdefault(requested, []).append(run)
    panels: dict[str, list[tuple[str, list[int], list[float], list[float]]]] = {}
    span = 8.0  # MAE on the paper's 1..9 scale
    order = sorted(by_attribute, key=lambda a: (PAPER_ATTRIBUTES.index(a) if a in PAPER_ATTRIBUTES else 99, a))
    for attribute in order:
        curves = []
        for run in sorted(by_attribute[attribute], key=lambda r: (r.config["base"], r.config["mode"])):
            # A model of several attributes logs each one's error apart, under its data column's name.
            column = run.config["columns"][run.config["attributes"].index(attribute)]
            suffix = f"_{column}" if len(run.config["columns"]) > 1 else ""
            history = [h for h in run.history if f"train_mae{suffix}" in h]
            if history:
                curves.append((f"{_base_label(run.config['base'])}-based, {run.config['mode']}",
                               [h["epoch"] for h in history], [h[f"train_mae{suffix}"] * span for h in history],
                               [h[f"test_mae{suffix}"] * span for h in history]))
        panels[attribute if attribute == column else f"{attribute} ({column} stands in)"] = curves
    return panels


def plot_fig3(runs: list[Run], path: str | os.PathLike) -> Path:
    """Fig. 3: per attribute, the train (solid) and test (dashed) MAE per epoch of the four configurations."""
    from psyattr.plots import plt

    panels = fig3_panels(runs)
    names = list(panels)
    cols = min(2, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.8 * rows), squeeze=False)
    colours = {"age-based, dense": "tab:blue", "age-based, full": "tab:cyan", "gender-based, dense": "tab:red",
               "gender-based, full": "tab:orange"}
    for ax, title in zip(axes.ravel(), names):
        for label, epochs, train, test in panels[title]:
            (line,) = ax.plot(epochs, train, color=colours.get(label), label=label)
            ax.plot(epochs, test, color=line.get_color(), linestyle="--", alpha=0.7)  # paired with its train curve
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("MAE on the 1..9 scale")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no learning curves: ridge runs are solved in one step", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    fig.suptitle("Learning curves: training MAE (solid) and test MAE (dashed) per epoch", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
