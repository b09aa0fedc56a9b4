"""The models a study compares: each with its run (when it came from one), its framing and its explainers."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from psyattr.data.rated import RatedFaces
from psyattr.faces.framing import FROM_MODEL, Framing, resolve_framing
from psyattr.models.loading import load_model
from psyattr.models.regressor import attribute_scores_layer
from psyattr.models.weights import recorded_framing
from psyattr.runs import Run


@dataclasses.dataclass(eq=False)
class StudyModel:
    """A trained attribute regressor, how to name it in figures ("age-based, dense"), its run and its framing.

    `run` is the training run the model came from (None for a bare `.keras` file); `framing` is how its photos
    are framed; `aliases` map the paper's attribute names to the run's columns.
    """

    model: keras.Model
    label: str
    base: str
    mode: str
    source: Path
    framing: Framing
    run: Run | None = None
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)
    _explainers: dict[tuple, Any] = dataclasses.field(default_factory=dict, repr=False)
    _forward: Any = dataclasses.field(default=None, repr=False)

    def explainer(self, method: str = "alpha2beta1", **options):
        """The model's attribution method `method` (`psyattr.attribution.build_explainer`), built once per options."""
        key = (method, tuple(sorted(options.items())))
        if key not in self._explainers:
            from psyattr.attribution import build_explainer

            self._explainers[key] = build_explainer(self.model, method, **options)
        return self._explainers[key]

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

    @property
    def attributes(self) -> list[str]:
        """The attribute columns the model scores."""
        return attribute_scores_layer(self.model).output_names

    def attribute_index(self, attribute: str, data: RatedFaces | None = None) -> int:
        """The output index of `attribute` (a column or, with `data` or the run's names, one of the paper's names)."""
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

    @property
    def history(self) -> list[dict[str, Any]]:
        """The run's per-epoch records (empty without a run)."""
        return self.run.history if self.run is not None else []

    def recorded_test_mae(self, column: str) -> tuple[float, int] | None:
        """The test MAE ([0, 1] scale) and test-face count the model's run recorded for `column`, if it has a run."""
        metrics = self.run.metrics if self.run is not None else None
        found = (metrics or {}).get("attributes", {}).get(column)
        return (float(found["mae"]), int(found["count"])) if found else None


def _base_name(config: dict[str, Any]) -> str:
    base = str(config.get("base", "?"))
    return base.split(":")[0] if base.split(":")[0] in ("age", "gender") else Path(base).stem


def load_study_model(spec: str | os.PathLike, label: str | None = None,
                     framing: str | Framing | None = None) -> StudyModel:
    """A regressor from a run folder (its config names the base and mode) or a `.keras` file.

    `framing` None takes the framing the model (or its run) records, and refuses a model that records none;
    a framing name frames every photo of this model that way instead.
    """
    path = Path(spec)
    run = Run.open(path) if Run.is_run(path) else None
    model = run.load_model() if run is not None and path.is_dir() else load_model(path)
    attribute_scores_layer(model)  # refuses anything but an attribute regressor, with its name
    recorded = recorded_framing(model) or (run.framing if run is not None else None)
    chosen = resolve_framing(FROM_MODEL if framing is None else framing, recorded, f"model {path}")
    if run is None:
        return StudyModel(model, label or (path.parent.name if path.stem == "model" else path.stem), "?", "?", path,
                          chosen)
    config = run.config
    base, mode = _base_name(config), str(config.get("mode", "?"))
    aliases = dict(zip(config.get("attributes", []), config.get("columns", [])))
    return StudyModel(model, label or f"{base}-based, {mode}", base, mode, path, chosen, run, aliases)


def load_study_models(specs: Sequence[str | os.PathLike], framing: str | Framing | None = None) -> list[StudyModel]:
    """`load_study_model` for each spec, labels made unique: results are keyed by label, so a clash would drop one."""
    models = [load_study_model(spec, framing=framing) for spec in specs]
    counts: dict[str, int] = {}
    for entry in models:
        counts[entry.label] = counts.get(entry.label, 0) + 1
    for entry in models:
        if counts[entry.label] > 1:
            name = entry.run.name if entry.run is not None else entry.source.stem
            entry.label = f"{entry.label} ({name})"
    labels = [entry.label for entry in models]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ValueError(f"the same model was given twice: {', '.join(twice)}")
    return models


__all__ = ["StudyModel", "load_study_model", "load_study_models"]
