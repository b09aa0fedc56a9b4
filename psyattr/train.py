"""Fine-tuning a base net to rated attributes: dense mode on cached features, or the whole net."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from psyattr.checkpoints import EpochCheckpoint, EpochProgress, atomic_save_model, atomic_write_text
from psyattr.data.pipeline import center_crops, train_dataset
from psyattr.data.rated import PAPER_SCALE, RatedFaces, RatingsError
from psyattr.data.splits import half_split
from psyattr.distributed import Cluster, fit_distributed, strategy_scope, writes_run
from psyattr.faces.framing import FROM_MODEL, get_framing, resolve_framing
from psyattr.faces.sources import frame_rated_images
from psyattr.features import pool5_features
from psyattr.models.forward import Forward
from psyattr.models.groups import FEATURES
from psyattr.models.layers import AttributeScores
from psyattr.models.loading import load_model
from psyattr.models.precision import dtype_policy, resolve_precision
from psyattr.models.regressor import build_attribute_regressor, check_mode
from psyattr.models.weights import recorded_framing
from psyattr.runs import Run, RunError, check_run_dir
from psyattr.transfer_metrics import regression_scores, with_ceiling

log = logging.getLogger(__name__)


# A dense-mode epoch on cached features costs about a twelfth of a full-mode one (scripts/bench_transfer.py).
DEFAULT_EPOCHS = {"dense": 120, "full": 30, "ridge": 1}  # ridge mode is solved in one step


@dataclasses.dataclass
class TrainConfig:
    """A fine-tuning run: which base, which mode, which attributes, and the paper's optimiser settings."""

    base: str
    mode: str
    attributes: list[str]
    epochs: int | None = None  # DEFAULT_EPOCHS of the mode
    batch_size: int = 32
    learning_rate: float = 1e-3
    momentum: float = 0.9
    seed: int = 0
    precision: str = "auto"
    framing: str | None = None  # how photos are framed; None: the base net's own framing
    dropout: float = 0.5  # of drop6 and drop7 while training (Levi & Hassner's)

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.framing is not None:
            get_framing(self.framing)
        if self.epochs is None:
            self.epochs = DEFAULT_EPOCHS[self.mode]
        if not self.attributes:
            raise ValueError("give at least one attribute")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        self.attributes = list(self.attributes)


def split_halves(data: RatedFaces, seed: int) -> dict[str, np.ndarray]:
    """The paper's seeded 50/50 split over all faces of the data set (the same for every attribute)."""
    train, test = half_split(len(data), seed)
    return {"train": train, "test": test}


def _valid_targets(data: RatedFaces, columns: Sequence[str], index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    targets = np.stack([data.normalised(c)[index] for c in columns], axis=1)
    keep = np.all(np.isfinite(targets), axis=1)
    return index[keep], targets[keep].astype(np.float32)


def feature_model(model: keras.Model) -> keras.Model:
    """The frozen part of a regressor: image to flattened pool5 features."""
    return keras.Model(model.inputs, model.get_layer("flatten").output, name="features")


def head_model(model: keras.Model) -> keras.Model:
    """A stand-alone copy of a regressor's trainable part (fc6..scores), fed with pool5 features."""
    inputs = keras.Input(model.get_layer("flatten").output.shape[1:], name="pool5_features")
    x = inputs
    for layer in model.layers:
        if layer.name in FEATURES or isinstance(layer, keras.layers.InputLayer):
            continue
        clone = layer.__class__.from_config(layer.get_config())
        x = clone(x)
        if layer.weights:
            clone.set_weights(layer.get_weights())
    return keras.Model(inputs, x, name="head")


def copy_weights(source: keras.Model, target: keras.Model) -> None:
    """Copy every weighted layer of `source` into the layer of the same name in `target`."""
    for layer in source.layers:
        if layer.weights:
            target.get_layer(layer.name).set_weights(layer.get_weights())


class SplitMAE(keras.callbacks.Callback):
    """At each epoch's end, the MAE ([0, 1] scale) of train and test halves in inference mode."""

    def __init__(self, splits: dict[str, tuple[Any, np.ndarray]], batch_size: int, columns: Sequence[str]):
        super().__init__()
        self.splits = splits
        self.batch_size = batch_size
        self.columns = list(columns)
        self._forward: Forward | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is None:
            return
        if self._forward is None:
            self._forward = Forward(self.model, self.batch_size * 4)
        for name, (inputs, targets) in self.splits.items():
            predicted = self._forward(inputs)
            errors = np.abs(np.asarray(predicted, np.float32) - targets)
            logs[f"{name}_mae"] = float(errors.mean())
            if len(self.columns) > 1:
                for k, column in enumerate(self.columns):
                    logs[f"{name}_mae_{column}"] = float(errors[:, k].mean())


def _compile(model: keras.Model, config: TrainConfig, jit_compile: bool | str = "auto") -> None:
    model.compile(
        optimizer=keras.optimizers.SGD(config.learning_rate, momentum=config.momentum, nesterov=True),
        loss="mse",
        metrics=["mae"],
        jit_compile=jit_compile,
    )


def data_identity(data: RatedFaces, data_spec: dict[str, Any] | None, columns: Sequence[str]) -> dict[str, str]:
    """What names a run's data: its kind and path as given, and a fingerprint of the rated faces it uses."""
    spec = data_spec or {}
    return {"kind": str(spec.get("kind", data.name)), "path": str(spec.get("path", "")),
            "fingerprint": data.fingerprint(columns)}


def train_regressor(
    data: RatedFaces,
    run_dir: str | os.PathLike,
    config: TrainConfig,
    data_spec: dict[str, Any] | None = None,
    resume: bool = False,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    keep_checkpoints: int = 2,
    split: tuple[str, dict[str, np.ndarray]] | None = None,
    cluster: Cluster | None = None,
) -> dict[str, Any]:
    """Fine-tune `config.base` to `config.attributes` of `data` in `run_dir`; return the test metrics.

    Everything is checked (the folder, the base net, its framing, the ratings, the images) before the run
    folder is written to, so a bad input leaves nothing behind. `split` is (its name, face indices of "train"
    and "test") where not the seeded 50/50 split (a fold of cross-validation). With a `cluster` (full mode
    only), every worker trains on its share of each global batch and the chief alone writes `run_dir`; the
    other workers return no metrics.
    """
    run_dir = Path(run_dir)
    if cluster is not None and config.mode != "full":
        raise ValueError("multi-worker training is for full mode: dense mode trains a small head on cached features "
                         "and gains nothing from more workers; run it without TF_CONFIG / --distributed")
    writer = writes_run(cluster)
    columns = [data.resolve(a) for a in config.attributes]
    base = load_model(config.base)
    framing = resolve_framing(config.framing if config.framing is not None else FROM_MODEL, recorded_framing(base),
                              f"base net {config.base}")
    # The seed fixes the 50/50 split, and the data its faces: resuming with either changed would mix them up.
    identity = {"kind": "train", "base": config.base, "mode": config.mode, "attributes": columns, "seed": config.seed,
                "framing": framing.name, "data": data_identity(data, data_spec, columns)}
    if split is not None:
        identity["split"] = split[0]
    state = check_run_dir(run_dir, identity, resume)
    if config.mode == "ridge" and Run.is_run(run_dir) and Run.open(run_dir).finished:
        raise RunError(f"{run_dir} already holds this finished ridge run: choose another output folder")
    splits = split[1] if split is not None else split_halves(data, config.seed)
    train_index, train_y = _valid_targets(data, columns, splits["train"])
    test_index, test_y = _valid_targets(data, columns, splits["test"])
    images, kept = frame_rated_images(data, framing, cache_dir=cache_dir, progress=progress)
    position = {int(k): i for i, k in enumerate(kept)}
    train_keep = np.asarray([i in position for i in train_index], bool)
    test_keep = np.asarray([i in position for i in test_index], bool)
    train_index, train_y = train_index[train_keep], train_y[train_keep]
    test_index, test_y = test_index[test_keep], test_y[test_keep]
    if len(train_index) < 2 or len(test_index) < 1:
        raise RatingsError(f"too few usable faces for {', '.join(columns)}: {len(train_index)} train, "
                           f"{len(test_index)} test (of {len(data)} faces, {len(data) - len(kept)} could not be "
                           "framed; see the warnings above for each one's reason)")
    notes = [n for n in (data.note(a) for a in config.attributes) if n]
    if state is None and writer:
        run = Run.start(run_dir, {"kind": "train", **dataclasses.asdict(config), "framing": framing.to_json(),
                                  "columns": columns, "data": data_spec or {"name": data.name}, "dataset": data.name,
                                  "scale": data.scale, "notes": notes, "problems": data.problems}, identity)
        run.write_split({"train": [data.ids[i] for i in train_index], "test": [data.ids[i] for i in test_index]})
    train_images = images[[position[i] for i in train_index]]
    test_images = images[[position[i] for i in test_index]]
    test_crops = center_crops(test_images)
    log.info("%s: %d train / %d test faces for %s (%s framing)", data.name, len(train_index), len(test_index),
             ", ".join(columns), framing.name)

    def make_regressor() -> keras.Model:
        return build_attribute_regressor(base, columns, [data.scale] * len(columns), config.mode,
                                         initial_scores=train_y.mean(axis=0), framing=framing.to_json(),
                                         dropout=config.dropout)

    regressor = make_regressor()
    if config.mode in ("dense", "ridge"):
        # The frozen features of every framed face, computed once and cached by weights and pixels: the 50/50
        # split and each fold of a cross-validation then share them. Mirror images as full mode's augmentation.
        center, mirrored = pool5_features(feature_model(regressor), images, cache_dir, progress)
        train_at, test_at = [position[i] for i in train_index], [position[i] for i in test_index]
        features = (center[train_at], mirrored[train_at], center[test_at])
    if config.mode == "ridge":
        trained = _fit_ridge(regressor, features, train_y, run_dir)
    elif config.mode == "dense":
        trained = _fit_dense(features, train_y, test_y, run_dir, config, identity, state, progress, keep_checkpoints,
                             regressor)
    else:
        trained = _fit_full(make_regressor, train_images, train_y, test_crops, test_y, run_dir, config, identity,
                            state, progress, keep_checkpoints, cluster)
    if not writer:
        return {}
    copy_weights(trained, regressor)
    atomic_save_model(regressor, run_dir / "model.keras")
    return evaluate_run(regressor, data, run_dir, columns, train_y, test_index, test_crops, test_y, data_spec)


def feature_dataset(center: np.ndarray, mirrored: np.ndarray, targets: np.ndarray, batch: int, seed: int
                    ) -> tf.data.Dataset:
    """Shuffled batches of cached features: each face once per epoch, its mirror image's features half the time."""
    data = tf.data.Dataset.from_tensor_slices((center, mirrored, targets))
    data = data.shuffle(len(targets), seed=seed, reshuffle_each_iteration=True)
    # Like the random mirroring of full-mode training, drawn per face and epoch.
    pick = lambda c, m, y: (tf.where(tf.random.uniform(()) < 0.5, c, m), y)  # noqa: E731
    return data.map(pick, num_parallel_calls=tf.data.AUTOTUNE).batch(batch).prefetch(tf.data.AUTOTUNE)


def _fit_dense(features, train_y, test_y, run_dir, config, identity, state, progress, keep, regressor
               ) -> keras.Model:
    train_center, train_mirrored, test_center = features
    if state is None:
        model = head_model(regressor)
        _compile(model, config, jit_compile=True)  # the small head trains about 1.6x faster under XLA
        initial_epoch, history = 0, []
    else:
        model = keras.models.load_model(run_dir / state["checkpoint"])
        initial_epoch, history = int(state["epoch"]), state["history"]
    evaluation = SplitMAE({"train": (train_center, train_y), "test": (test_center, test_y)}, config.batch_size,
                          identity["attributes"])
    callbacks = [evaluation, EpochCheckpoint(run_dir, identity, history, keep=keep)]
    if progress:  # after the checkpoint, so that the bar never runs ahead of what is saved
        callbacks.append(EpochProgress(config.epochs, initial_epoch, f"training {run_dir.name}"))
    if initial_epoch < config.epochs:
        model.fit(feature_dataset(train_center, train_mirrored, train_y, config.batch_size, config.seed + initial_epoch),
                  epochs=config.epochs, initial_epoch=initial_epoch, callbacks=callbacks, shuffle=False,
                  verbose=0 if progress else 2)
    return model


def _fit_ridge(regressor, features, train_y, run_dir) -> keras.Model:
    from psyattr.ridge import fit_ridge, root_features

    train_center, train_mirrored, _ = features
    # The head learns from the mean of each face's features and its mirror image's.
    fit = fit_ridge(root_features((train_center + train_mirrored) / 2, regressor.get_layer("root").offset), train_y)
    regressor.get_layer("fc8").set_weights([fit.kernel.astype(np.float32), fit.bias.astype(np.float32)])
    columns = regressor.get_layer("scores").output_names
    record = {c: {"penalty": p, "loo_mse": e} for c, p, e in zip(columns, fit.penalties, fit.loo_mse)}
    atomic_write_text(run_dir / "ridge.json", json.dumps(record, indent=2))
    log.info("ridge penalties (leave-one-out over %d training faces): %s", len(train_y),
             ", ".join(f"{c} {p:g}" for c, p in zip(columns, fit.penalties)))
    return regressor


def _fit_full(make_regressor, train_images, train_y, test_crops, test_y, run_dir, config, identity, state, progress,
              keep, cluster=None) -> keras.Model:
    precision = resolve_precision(config.precision)
    with dtype_policy(precision), strategy_scope(cluster):
        if state is None:
            model = make_regressor()  # built under the training precision
            _compile(model, config)
            initial_epoch, history = 0, []
        else:
            model = keras.models.load_model(run_dir / state["checkpoint"])
            initial_epoch, history = int(state["epoch"]), state["history"]
    callbacks: list[keras.callbacks.Callback] = []
    if writes_run(cluster):
        callbacks += [SplitMAE({"train": (center_crops(train_images), train_y), "test": (test_crops, test_y)},
                               config.batch_size, identity["attributes"]),
                      EpochCheckpoint(run_dir, identity, history, keep=keep)]
        if progress:
            callbacks.append(EpochProgress(config.epochs, initial_epoch, f"training {run_dir.name}"))
    if initial_epoch >= config.epochs:
        return model
    steps = math.ceil(len(train_images) / config.batch_size)
    batches = lambda: train_dataset(train_images, train_y, config.batch_size, config.seed + initial_epoch)  # noqa: E731
    if cluster is not None:
        fit_distributed(model, cluster, batches, keras.losses.mean_squared_error, steps, config.epochs, initial_epoch,
                        callbacks)
    else:
        model.fit(batches(), steps_per_epoch=steps, epochs=config.epochs, initial_epoch=initial_epoch, shuffle=False,
                  callbacks=callbacks, verbose=0 if progress else 2)
    return model


def evaluate_run(model: keras.Model, data: RatedFaces, out_dir: Path, columns: Sequence[str], train_y: np.ndarray,
                 test_index: np.ndarray, test_crops: np.ndarray, test_y: np.ndarray,
                 data_spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score the test half per attribute; write metrics.json and predictions.csv into `out_dir`.

    Where the data set has single ratings (OMI), each attribute's raters' split-half r over the same test
    faces is the `ceiling`, and `r_fraction` is the model's r as a fraction of it.
    """
    from psyattr.ceiling import ceilings

    out_dir.mkdir(parents=True, exist_ok=True)
    predicted = Forward(model, 32)(test_crops)
    metrics: dict[str, Any] = {"dataset": data.name, "scale": list(data.scale), "test_count": int(len(test_y)),
                               "attributes": {}}
    ceiling = ceilings(data_spec, columns, [data.ids[i] for i in test_index])
    for k, column in enumerate(columns):
        scores = regression_scores(test_y[:, k], predicted[:, k], float(train_y[:, k].mean()), data.scale)
        metrics["attributes"][column] = with_ceiling(scores, ceiling.get(column))
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", *(f"{c}_true" for c in columns), *(f"{c}_predicted" for c in columns)])
    for row, index in enumerate(test_index):
        writer.writerow([data.ids[index], *data.to_scale(test_y[row]).round(4), *data.to_scale(predicted[row]).round(4)])
    atomic_write_text(out_dir / "predictions.csv", buffer.getvalue())
    return metrics


def evaluate_saved_run(run_dir: str | os.PathLike, data: RatedFaces | None = None,
                       cache_dir: str | os.PathLike | None = None, data_spec: dict[str, Any] | None = None
                       ) -> dict[str, Any]:
    """Re-score a run's saved model on its test faces (the data from its config unless given).

    Scores on the run's own data use the test ids the run recorded and replace its metrics.json and
    predictions.csv; scores on other data (its seeded test half) go to `evaluations/<data name>/` in the run, so
    that the run's own results (and Table 1) are never overwritten.
    """
    from psyattr.data.rated import read_rated

    run = Run.open(run_dir)
    if not run.model_file.exists():
        raise RunError(f"{run.path} is not a finished training run: model.keras is missing (resume it with --resume)")
    out_dir = evaluation_dir(run.path, data)
    own_data = data is None
    if own_data:
        spec = data_spec = run.data_spec
        if "kind" not in spec:
            raise ValueError(f"{run.path / 'config.json'} does not say where its data is: pass --data")
        data = read_rated(spec["kind"], spec["path"], tuple(spec["scale"]) if spec.get("scale") else None,
                          spec.get("image_column"))
    columns = run.config["columns"]
    model = load_model(run.model_file)
    if regressor_columns(model) != columns:
        raise ValueError(f"{run.model_file} scores {regressor_columns(model)}, the run config says {columns}")
    framing = resolve_framing(FROM_MODEL, recorded_framing(model) or run.framing, f"run {run.path}")
    if own_data:
        split = run.split
        train_index, test_index = data.index_of(split["train"]), data.index_of(split["test"])
        _, train_y = _valid_targets(data, columns, train_index)
        test_index, test_y = _valid_targets(data, columns, test_index)
    else:
        splits = split_halves(data, run.seed)
        _, train_y = _valid_targets(data, columns, splits["train"])
        test_index, test_y = _valid_targets(data, columns, splits["test"])
    if len(test_index) == 0 or len(train_y) == 0:
        raise RatingsError(f"{data.name} has no valid ratings of {', '.join(columns)} in the test faces of "
                           f"{run.path}: nothing to evaluate it on")
    images, kept = frame_rated_images(data, framing, test_index, cache_dir, progress=False)
    if len(kept) == 0:
        raise RatingsError(f"none of the {len(test_index)} test images of {data.name} could be framed")
    return evaluate_run(model, data, out_dir, columns, train_y, test_index[kept], center_crops(images), test_y[kept],
                        data_spec)


def evaluation_dir(run_dir: str | os.PathLike, data: RatedFaces | None = None) -> Path:
    """Where `evaluate_saved_run` writes: the run itself for its own data, `evaluations/<data name>/` for other data."""
    if data is None:
        return Path(run_dir)
    return Path(run_dir) / "evaluations" / (re.sub(r"[^A-Za-z0-9._-]+", "_", data.name).strip("_") or "data")


def regressor_columns(model: keras.Model) -> list[str]:
    """The attribute columns a trained regressor scores."""
    return [layer for layer in model.layers if isinstance(layer, AttributeScores)][-1].output_names


__all__ = ["PAPER_SCALE", "TrainConfig", "evaluate_run", "evaluate_saved_run", "evaluation_dir", "train_regressor"]
