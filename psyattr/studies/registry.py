"""The studies, listed once: the command line, the demo and the report go through this registry.

Each study's runner is `runner(inputs: StudyInputs, out_dir, **options) -> StudyResult`; it is imported only
when the study runs, so that listing the studies (for `--help` or the report) loads no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any


@dataclasses.dataclass(frozen=True)
class Study:
    """One study: its name (the report's section), command, folder in a run, title, and the function that runs it.

    `rated_faces` studies work on the models' held-out rated faces (else on photos of their own);
    `default_limit` is how many of those faces the command uses unless told; `one_model` studies measure one
    model at a time; `composite` says whether the LRP composite is the study's to choose; `progress` studies
    take a `progress(message)` callback.
    """

    name: str
    command: str
    folder: str
    title: str
    help: str
    runner: str
    rated_faces: bool = True
    default_limit: int | None = None
    one_model: bool = False
    composite: bool = True
    progress: bool = False

    @property
    def makes_it(self) -> str:
        """The command that writes the study's folder in a run."""
        return f"psyattr study {self.command} --out RUN/{self.folder}"

    def run(self, inputs, out_dir: str | os.PathLike, **options: Any):
        """Run the study on `inputs` (a StudyInputs) into `out_dir`; return its result."""
        module, _, function = self.runner.partition(":")
        return getattr(importlib.import_module(module), function)(inputs, out_dir, **options)


STUDIES: tuple[Study, ...] = (
    Study("heatmaps", "heatmaps", "heatmaps", "Heatmaps of test faces, one scale across models",
          "Heatmap grid of test faces for all models on one colour scale.",
          "psyattr.studies.heatmaps:heatmap_study", default_limit=6),
    Study("occlusion", "occlusion", "occlusion", "Occluding the mouth and the eyes",
          "Cover the mouth, the right eye and both eyes; score change per region with 95% CIs.",
          "psyattr.studies.occlusion:occlusion_study"),
    Study("expressions", "expressions", "expressions", "The same person happy and sad",
          "The same people happy and sad: scores, heatmaps and relevance share per face region.",
          "psyattr.studies.expressions:expression_study", rated_faces=False),
    Study("comparison", "compare", "comparison", "Which base model suits the transfer",
          "Compare models (e.g. age- vs gender-based): relevance per region, spread, error, learning speed.",
          "psyattr.studies.comparison:comparison_study", default_limit=64),
    Study("quality", "quality", "quality", "How faithful are the explanations (region perturbation, AOPC)",
          "Region perturbation and AOPC of every explanation method (higher is more faithful).",
          "psyattr.studies.quality:quality_study", default_limit=16, one_model=True, composite=False, progress=True),
)


def get_study(name: str) -> Study:
    """The registered study `name` (or command); a ValueError lists them."""
    for study in STUDIES:
        if name in (study.name, study.command):
            return study
    raise ValueError(f"unknown study {name!r}: expected one of {', '.join(s.name for s in STUDIES)}")


__all__ = ["STUDIES", "Study", "get_study"]
