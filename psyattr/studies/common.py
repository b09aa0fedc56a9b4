"""What every study needs: trained models with their labels, the test faces, and a summary for the report."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from psyattr.checkpoints import atomic_write_text
from psyattr.data.cache import decode_images
from psyattr.data.pipeline import center_crops
from psyattr.data.rated import RatedFaces
from psyattr.data.splits import half_split
from psyattr.models.loading import load_model
from psyattr.models.regressor import attribute_scores_layer

SUMMARY_FILE = "summary.json"


@dataclasses.dataclass
class StudyModel:
    """A trained attribute regressor and how to name it in figures ("age-based, dense")."""

    model: keras.Model
    label: str
    base: str
    mode: str
    source: Path
    _explainers: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    _forward: Any = dataclasses.field(default=None, repr=False)
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)  # the paper's names -> the run's columns

    @property
    def run_dir(self) -> Path:
        """The folder holding the model's run files (config, state, metrics), if it came from a run."""
        return self.source if self.source.is_dir() else self.source.parent

    def scores(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """The model's [0, 1] outputs (N, attributes) for `images`, by one compiled forward pass per batch."""
        if self._forward is None:
            # One trace for every batch size: `model.predict` retraces for each new one, and studies send many.
            import tensorflow as tf

            self._forward = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True,
                                        input_signature=[tf.TensorSpec((None, *self.model.input_shape[1:]))])
        images = np.asarray(images, np.float32)
        return np.concatenate([self._forward(images[i:i + batch_size]).numpy()
                               for i in range(0, len(images), batch_size)])

    def explainer(self, composite: str = "alpha2beta1"):
        """The model's LRP explainer for `composite`, compiled once and shared by every study."""
        from psyattr.lrp import LRPExplainer

        if composite not in self._explainers:
            self._explainers[composite] = LRPExplainer(self.model, composite)
        return self._explainers[composite]

    @property
    def attributes(self) -> list[str]:
        """The attribute columns the model scores."""
        return attribute_scores_layer(self.model).output_names

    def attribute_index(self, attribute: str, data: RatedFaces | None = None) -> int:
        """The output index of `attribute` (a column or, with `data`, one of the paper's names)."""
        names = self.attributes
        column = data.resolve(attribute) if data is not None else self.aliases.get(attribute, attribute)
        if column not in names:
            raise ValueError(f"model {self.label} ({self.source}) scores {', '.join(names)}, not {attribute!r}")
        return names.index(column)

    def rated_scores(self, images: np.ndarray, index: int) -> np.ndarray:
        """The model's scores of output `index` for `images`, on that attribute's rating scale."""
        low, high = self.rating_scale(index)
        return low + self.scores(images)[:, index] * (high - low)

    def rating_scale(self, index: int) -> tuple[float, float]:
        """The rating scale (low, high) of output `index`."""
        layer = attribute_scores_layer(self.model)
        return layer.scale_low[index], layer.scale_high[index]


def load_study_model(spec: str | os.PathLike, label: str | None = None) -> StudyModel:
    """A regressor from a run folder (its config names the base and mode) or a `.keras` file."""
    path = Path(spec)
    model = load_model(path)
    attribute_scores_layer(model)  # refuses anything but an attribute regressor, with its name
    config_file = (path if path.is_dir() else path.parent) / "config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    base = str(config.get("base", "?"))
    base = base.split(":")[0] if base.split(":")[0] in ("age", "gender") else Path(base).stem
    mode = config.get("mode", "?")
    aliases = dict(zip(config.get("attributes", []), config.get("columns", [])))
    return StudyModel(model, label or f"{base}-based, {mode}", base, mode, path, aliases=aliases)


def load_study_models(specs: Sequence[str | os.PathLike]) -> list[StudyModel]:
    """`load_study_model` for each spec, labels made unique: results are keyed by label, so a clash would drop one."""
    models = [load_study_model(spec) for spec in specs]
    counts: dict[str, int] = {}
    for entry in models:
        counts[entry.label] = counts.get(entry.label, 0) + 1
    for entry in models:
        if counts[entry.label] > 1:
            name = entry.source.name if entry.source.is_dir() else entry.source.stem
            entry.label = f"{entry.label} ({name})"
    labels = [entry.label for entry in models]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ValueError(f"the same model was given twice: {', '.join(twice)}")
    return models


def held_out_faces(data: RatedFaces, seed: int = 0, limit: int | None = None) -> np.ndarray:
    """Indices of the faces in the test half of the paper's seeded 50/50 split (the first `limit`)."""
    test = half_split(len(data), seed)[1]
    return test[:limit] if limit else test


def model_inputs(paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Decoded model inputs (N, 227, 227, 3) of the readable paths, and which paths those were."""
    images, kept = decode_images(list(paths), 256, progress=False)
    return center_crops(images), kept


def write_summary(folder: str | os.PathLike, title: str, text: str, figures: Sequence[tuple[str, str]],
                  table_md: str | None = None, numbers: dict[str, Any] | None = None) -> Path:
    """Describe a study's outputs for the report: title, what it shows, figures (file, caption), a table."""
    folder = Path(folder)
    summary = {"title": title, "text": text, "figures": [{"file": f, "caption": c} for f, c in figures],
               "table_md": table_md, "numbers": numbers or {}}
    path = folder / SUMMARY_FILE
    atomic_write_text(path, json.dumps(summary, indent=2, default=float))
    return path
