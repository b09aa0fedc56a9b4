"""The explanation-quality study for the report: region-perturbation curves and AOPC of one model."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from psyattr.data.rated import RatedFaces
from psyattr.studies.common import StudyModel, model_inputs, write_summary
from psyattr.studies.quality import (
    plot_perturbation_curves,
    quality_table_markdown,
    run_region_perturbation,
    write_quality_table,
)


def faithfulness_study(entry: StudyModel, data: RatedFaces, attribute: str, indices: Sequence[int],
                       out_dir: str | os.PathLike, methods: Sequence[str] | None = None, steps: int = 30,
                       patch: int = 15, seed: int = 0,
                       progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run region perturbation for every method on the faces `indices`; write curves, tables and a summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images, _ = model_inputs([data.paths[i] for i in indices])
    k = entry.attribute_index(attribute, data)
    results = run_region_perturbation(entry.model, images, k, methods, steps=steps, patch=patch, seed=seed,
                                progress=progress)
    figure = plot_perturbation_curves(results, out_dir / "perturbation_curves.png",
                                      f"{entry.label}, {attribute}: most relevant {patch}x{patch} patches first")
    write_quality_table(results, out_dir / "aopc.csv")
    write_quality_table(results, out_dir / "aopc.md")
    ranking = results.ranking()
    numbers = {name: {"aopc": m.aopc_mean, "se": m.aopc_se, "seconds_per_image": m.seconds_per_image}
               for name, m in results.methods.items()}
    write_summary(
        out_dir, "How faithful are the explanations",
        f"Region perturbation (Samek et al. 2017) on {results.num_images} test faces of {data.name} for the "
        f"{entry.label} model's {attribute} score: the {patch}x{patch} patches each method rates most relevant are "
        f"replaced by noise first, {steps} steps. AOPC, the mean score drop over the steps, is higher for a more "
        f"faithful explanation; a random order is the floor. Best here: {ranking[0].name}; lowest: {ranking[-1].name}.",
        [(figure.name, f"Mean drop of the pre-activation {attribute} score as the most relevant patches are "
                       "perturbed, per method (legend: AOPC ± standard error).")],
        quality_table_markdown(results), numbers=numbers)
    return numbers
