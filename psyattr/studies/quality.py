"""Explanation quality: region-perturbation curves and AOPC for every attribution method on one model.

`run_region_perturbation` measures the methods on a batch of images; `quality_study` is the registered study
on a model's held-out faces, with the curves, the ranked table and the summary for the report.

Following Samek et al. 2017 ("Evaluating the visualization of what a deep neural network has learned"),
each method orders an image's patches by summed relevance; the patches are replaced most relevant first
and the explained pre-activation score is recorded after every step. The area over the perturbation
curve (AOPC, the mean drop f(x_0) - f(x_k) over k = 0..L) is higher for a more faithful explanation; a
random ordering is the baseline. Every method sees the same perturbation values, so methods differ
only in the order in which they remove patches.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import keras
import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from psyattr.checkpoints import atomic_write_text
from psyattr.studies.inputs import HeldOutFaces, StudyInputs
from psyattr.studies.summary import Figure as ReportFigure
from psyattr.studies.summary import StudyResult
from psyattr.attribution import (
    DEFAULT_PENULTIMATE_LAYER, AttributionMethod, build_explainer, build_score_function, check_method_name, method_names,
)
from psyattr.explanation import Explanation
from psyattr.models.outputs import Target, check_images, resolve_targets
from psyattr.studies.perturbation import (
    PERTURBATIONS, aopc, check_perturbation, patch_grid, perturbation_curves, standard_error,
)

DEFAULT_STEPS = 100  # Samek et al.: L = 100 steps of 9x9 patches
DEFAULT_PATCH = 9
BASELINE = "random"


@dataclasses.dataclass(frozen=True, eq=False)
class MethodQuality:
    """One method's region-perturbation result on N images."""

    name: str
    scores: np.ndarray  # (N, L + 1): f(x_k), the explained pre-activation score after k patches
    seconds_per_image: float  # computing the heatmaps, compilation excluded

    @property
    def drops(self) -> np.ndarray:
        """Score drop f(x_0) - f(x_k) per image `(N, L + 1)`; the first column is 0."""
        return self.scores[:, :1] - self.scores

    @property
    def curve(self) -> np.ndarray:
        """Mean score drop over the images `(L + 1,)`."""
        return self.drops.mean(axis=0)

    @property
    def aopc(self) -> np.ndarray:
        """AOPC per image `(N,)`."""
        return aopc(self.scores)

    @property
    def aopc_mean(self) -> float:
        """AOPC averaged over the images: higher is more faithful."""
        return float(self.aopc.mean())

    @property
    def aopc_se(self) -> float:
        """Standard error of `aopc_mean` over the images (NaN for one image)."""
        return standard_error(self.aopc)


@dataclasses.dataclass(frozen=True, eq=False)
class PerturbationResults:
    """Every method's result, in the order they ran, and the settings they share."""

    methods: dict[str, MethodQuality]
    targets: np.ndarray  # (N,) the explained fc8 output of each image
    steps: int
    patch: int
    perturbation: str
    seed: int
    model_name: str

    @property
    def num_images(self) -> int:
        """How many images every curve averages."""
        return len(self.targets)

    def ranking(self) -> list[MethodQuality]:
        """The methods from the highest AOPC (most faithful) to the lowest."""
        return sorted(self.methods.values(), key=lambda m: m.aopc_mean, reverse=True)

    def rows(self) -> list[dict[str, float | int | str]]:
        """One plain row per method, by rank: for tables, JSON and the report."""
        baseline = self.methods.get(BASELINE)
        rows = []
        for rank, method in enumerate(self.ranking(), start=1):
            row = {"rank": rank, "method": method.name, "aopc": method.aopc_mean, "aopc_se": method.aopc_se}
            if baseline is not None:
                # Paired over the images: the same faces and the same noise for both orderings.
                difference = method.aopc - baseline.aopc
                row["aopc_minus_random"] = float(difference.mean())
                row["aopc_minus_random_se"] = standard_error(difference)
            row["seconds_per_image"] = method.seconds_per_image
            rows.append(row)
        return rows

    def describe(self) -> str:
        """The settings in one sentence."""
        return (f"{self.model_name}: {self.num_images} images, {self.steps} steps of {self.patch}x{self.patch} "
                f"patches replaced by {PERTURBATIONS[self.perturbation]}, seed {self.seed}")


def _heatmaps(name: str, explanation: object, expected: tuple[int, ...]) -> np.ndarray:
    if not isinstance(explanation, Explanation):
        raise TypeError(f"attribution method {name!r} returned {type(explanation).__name__}, expected an Explanation "
                        "(as every method of psyattr.attribution.build_explainer returns)")
    heat = explanation.heatmap
    if heat.shape != expected:
        raise ValueError(f"attribution method {name!r} returned heatmaps of shape {heat.shape}, expected "
                         f"(N, H, W) = {expected}")
    if not np.isfinite(heat).all():
        raise ValueError(f"attribution method {name!r} returned NaN or infinite relevance")
    return heat


def _timed_heatmaps(name: str, method: AttributionMethod, images: np.ndarray, targets: np.ndarray,
                    batch_size: int) -> tuple[np.ndarray, float]:
    # Tracing and XLA compilation happen in the first batch: it is left out of the time per image, or, when
    # it is the only batch, run once untimed beforehand.
    single = len(images) <= batch_size
    if single:
        method(images, targets)
    heatmaps, elapsed, timed = [], 0.0, 0
    for index, start in enumerate(range(0, len(images), batch_size)):
        chunk = slice(start, start + batch_size)
        begin = time.perf_counter()
        explanation = method(images[chunk], targets[chunk])
        if single or index > 0:
            elapsed, timed = elapsed + time.perf_counter() - begin, timed + len(images[chunk])
        heatmaps.append(_heatmaps(name, explanation, images[chunk].shape[:3]))
    return np.concatenate(heatmaps), elapsed / timed


def _resolve_methods(methods: Sequence[str] | Mapping[str, AttributionMethod] | None
                     ) -> dict[str, AttributionMethod | None]:
    # Names are built one at a time in the study, so that only one method's compiled graphs live at once.
    if methods is None:
        return dict.fromkeys(method_names())
    if isinstance(methods, Mapping):
        for name, method in methods.items():
            if not callable(method):
                raise TypeError(f"method {name!r} must be callable(images, target) -> Explanation, got {method!r}")
        resolved = dict(methods)
    else:
        resolved = {check_method_name(name): None for name in ([methods] if isinstance(methods, str) else methods)}
    if not resolved:
        raise ValueError(f"give at least one method, e.g. {', '.join(method_names())}")
    return resolved


def run_region_perturbation(model: keras.Model, images: np.ndarray, target: Target,
                            methods: Sequence[str] | Mapping[str, AttributionMethod] | None = None,
                            steps: int = DEFAULT_STEPS, patch: int = DEFAULT_PATCH, seed: int = 0, *,
                            perturbation: str = "uniform", batch_size: int = 8, jit_compile: bool = True,
                            smooth_samples: int = 20, smooth_noise: float = 0.2,
                            penultimate_layer: str = DEFAULT_PENULTIMATE_LAYER,
                            progress: Callable[[str], None] | None = None) -> PerturbationResults:
    """Region-perturbation curves and AOPC of each attribution method on `images` (N, 227, 227, 3), RGB 0..255.

    `target`: the fc8 output to explain (index, name, one per image, or None for each image's top output).
    `methods`: names (default: every one of `method_names()`) or a mapping from a name to one's own
    `callable(images, target) -> Explanation`. The other options set the perturbation ("uniform" noise or the
    image "mean"), batching, XLA, SmoothGrad and Grad-CAM.
    """
    score_fn = build_score_function(model, jit_compile=jit_compile)  # refuses models without fc8
    resolved = _resolve_methods(methods)
    images = check_images(images, score_fn.input_shape, f"model {model.name!r}")
    check_perturbation(perturbation)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    num_patches = len(patch_grid(images.shape[1], images.shape[2], patch)[0])
    if not isinstance(steps, (int, np.integer)) or not 1 <= steps <= num_patches:
        raise ValueError(f"steps must be from 1 to the number of {patch}x{patch} patches ({num_patches}), "
                         f"got {steps!r}")
    targets = resolve_targets(score_fn.names, target, len(images), lambda: np.concatenate(
        [score_fn(images[start:start + batch_size]) for start in range(0, len(images), batch_size)]),
        f"model {model.name!r}")
    options = dict(seed=seed, jit_compile=jit_compile, smooth_samples=smooth_samples, smooth_noise=smooth_noise,
                   penultimate_layer=penultimate_layer)
    results = {}
    for name, method in resolved.items():
        if progress is not None:
            progress(f"{name}: explaining {len(images)} images")
        if method is None:
            method = build_explainer(model, name, **options)
        heatmaps, seconds = _timed_heatmaps(name, method, images, targets, batch_size)
        if progress is not None:
            progress(f"{name}: perturbing {steps} patches")
        scores = perturbation_curves(score_fn, images, heatmaps, targets, steps, patch, perturbation, seed, batch_size)
        results[name] = MethodQuality(name, scores, seconds)
    return PerturbationResults(results, targets, int(steps), int(patch), perturbation, seed, model.name)


def plot_perturbation_curves(results: PerturbationResults, path: str | os.PathLike, title: str | None = None) -> Path:
    """Plot the mean score drop after each step, one line per method (legend with AOPC), to a PNG/PDF/SVG file."""
    path = Path(path)
    figure = Figure(figsize=(8.5, 5.0), layout="constrained")
    axes = figure.subplots()
    steps = np.arange(results.steps + 1)
    # Strong tab20 colours first, then their light partners: neighbours in the ranking stay distinguishable.
    palette = colormaps["tab20"].colors[0::2] + colormaps["tab20"].colors[1::2]
    colour_index = 0
    for method in results.ranking():
        label = f"{method.name} (AOPC {method.aopc_mean:.3g} ± {_number(method.aopc_se, 2)})"
        if method.name == BASELINE:
            axes.plot(steps, method.curve, color="black", linestyle="--", linewidth=1.5, label=label)
        else:
            axes.plot(steps, method.curve, color=palette[colour_index % len(palette)], linewidth=1.5, label=label)
            colour_index += 1
    axes.axhline(0.0, color="grey", linewidth=0.5)
    axes.set_xlabel(f"perturbation steps k ({results.patch}x{results.patch} patches, most relevant first)")
    axes.set_ylabel("mean score drop f(x₀) − f(xₖ)")
    axes.set_xlim(0, results.steps)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(title or "Region perturbation (Samek et al. 2017)", fontsize="medium")
    figure.suptitle(results.describe(), fontsize="small", color="dimgrey")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", title="higher AOPC = more faithful",
                title_fontsize="small", frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150)
    return path


def _number(value: float, digits: int = 3) -> str:
    return "–" if value != value else f"{value:.{digits}g}"  # NaN (one image) has no standard error


def quality_table_markdown(results: PerturbationResults) -> str:
    """The methods ranked by AOPC as a Markdown table (mean ± standard error over the images)."""
    rows = results.rows()
    with_baseline = bool(rows) and "aopc_minus_random" in rows[0]
    header = "| rank | method | AOPC | AOPC − random | s / image |" if with_baseline else \
             "| rank | method | AOPC | s / image |"
    lines = [header, "|---:|---|---:|---:|---:|" if with_baseline else "|---:|---|---:|---:|"]
    for row in rows:
        cells = [str(row["rank"]), str(row["method"]), f"{_number(row['aopc'])} ± {_number(row['aopc_se'], 2)}"]
        if with_baseline:
            cells.append(f"{_number(row['aopc_minus_random'])} ± {_number(row['aopc_minus_random_se'], 2)}")
        cells.append(f"{row['seconds_per_image']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def quality_table_csv(results: PerturbationResults) -> str:
    """The methods ranked by AOPC as CSV, with the study's settings in every row."""
    rows = results.rows()
    settings = {"images": results.num_images, "steps": results.steps, "patch": results.patch,
                "perturbation": results.perturbation, "seed": results.seed, "model": results.model_name}
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*rows[0], *settings] if rows else list(settings), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, **settings})
    return buffer.getvalue()


def write_quality_table(results: PerturbationResults, path: str | os.PathLike) -> Path:
    """Write the ranked table as Markdown (`.md`, with a line on the settings) or CSV (`.csv`)."""
    path = Path(path)
    if path.suffix == ".md":
        text = f"Region perturbation, {results.describe()}. Higher AOPC = more faithful.\n\n"
        atomic_write_text(path, text + quality_table_markdown(results))
    elif path.suffix == ".csv":
        atomic_write_text(path, quality_table_csv(results))
    else:
        raise ValueError(f"cannot tell the table format from {path.name!r}: give a .md or .csv path")
    return path


@dataclasses.dataclass(kw_only=True)
class QualityResult(StudyResult):
    """The quality study on one model's held-out faces: every method's curve and AOPC."""

    study = "quality"
    attribute: str
    model: str
    faces: HeldOutFaces
    ids: list[str]
    skipped: list[str]
    perturbation: PerturbationResults

    @property
    def ranking(self) -> list[MethodQuality]:
        """The methods from the most faithful (highest AOPC) to the least."""
        return self.perturbation.ranking()

    def table_markdown(self) -> str:
        return quality_table_markdown(self.perturbation)

    def numbers(self) -> dict:
        return {"model": self.model, "attribute": self.attribute, "test_faces": self.faces.to_summary(),
                "skipped": self.skipped, "methods": {
                    m.name: {"aopc": m.aopc_mean, "se": m.aopc_se, "seconds_per_image": m.seconds_per_image}
                    for m in self.perturbation.methods.values()}}

    def lines(self) -> list[str]:
        return [f"{m.name:28s} AOPC {m.aopc_mean:8.4f} ± {_number(m.aopc_se, 2)}" for m in self.ranking]


def quality_study(inputs: StudyInputs, out_dir: str | os.PathLike, *, attribute: str = "happy",
                  limit: int | None = None, methods: Sequence[str] | None = None, steps: int = 30, patch: int = 15,
                  perturbation_seed: int = 0, progress: Callable[[str], None] | None = None) -> QualityResult:
    """Region perturbation of every method (default: all) on one model's first `limit` held-out faces.

    Writes the curves, the ranked table (Markdown and CSV) and the summary; `perturbation_seed` fixes the noise.
    """
    if len(inputs.models) != 1:
        raise ValueError("study quality measures one model at a time: run it once per --model")
    entry = inputs.models[0]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = inputs.data
    chosen, usable = inputs.faces(limit)
    k = entry.attribute_index(attribute, data)
    # The methods are built one at a time here, not kept by the model: only one method's compiled graphs live at once.
    results = run_region_perturbation(entry.model, usable.images(entry), k, methods, steps=steps, patch=patch,
                                      seed=perturbation_seed, progress=progress)
    figure = plot_perturbation_curves(results, out_dir / "perturbation_curves.png",
                                      f"{entry.label}, {attribute}: most relevant {patch}x{patch} patches first")
    write_quality_table(results, out_dir / "aopc.csv")
    write_quality_table(results, out_dir / "aopc.md")
    ranking = results.ranking()
    text = (f"Region perturbation (Samek et al. 2017) on {results.num_images} test faces of {data.name} for the "
            f"{entry.label} model's {attribute} score: the {patch}x{patch} patches each method rates most relevant are "
            f"replaced by noise first, {steps} steps. AOPC, the mean score drop over the steps, is higher for a more "
            f"faithful explanation; a random order is the floor. Best here: {ranking[0].name}; lowest: "
            f"{ranking[-1].name}. {chosen.describe()} {inputs.framing_text()}")
    result = QualityResult(
        out_dir=out_dir, text=text, attribute=attribute, model=entry.label, faces=chosen, ids=usable.ids,
        skipped=usable.skipped, perturbation=results,
        figures=(ReportFigure(figure.name, f"Mean drop of the pre-activation {attribute} score as the most relevant "
                                     "patches are perturbed, per method (legend: AOPC ± standard error)."),))
    result.write_summary()
    return result


__all__ = [
    "DEFAULT_PATCH", "DEFAULT_STEPS", "MethodQuality", "PerturbationResults", "QualityResult", "method_names",
    "plot_perturbation_curves", "quality_table_csv", "quality_table_markdown", "quality_study", "run_region_perturbation",
    "write_quality_table",
]
