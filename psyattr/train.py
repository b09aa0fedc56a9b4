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
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from psyattr.checkpoints import (EpochCheckpoint, EpochProgress, atomic_save_model, atomic_write_text, best_epoch,
                                 checkpoint_name, read_state)
from psyattr.data.pipeline import center_crops, train_dataset
from psyattr.data.rated import PAPER_SCALE, RatedFaces, RatingsError
from psyattr.data.splits import half_split
from psyattr.distributed import Cluster, DistributedError, fit_distributed, strategy_scope, writes_run
from psyattr.faces.framing import FROM_MODEL, get_framing, resolve_framing
from psyattr.faces.sources import frame_rated_images
from psyattr.features import pool5_features
from psyattr.models.forward import Forward
from psyattr.models.groups import FEATURES
from psyattr.models.layers import AttributeScores
from psyattr.models.loading import load_model
from psyattr.models.optimizers import GroupSGD
from psyattr.models.precision import dtype_policy, resolve_precision
from psyattr.models.regressor import build_attribute_regressor, check_mode
from psyattr.models.weights import recorded_framing
from psyattr.runs import Run, RunError, check_run_dir
from psyattr.transfer_metrics import regression_scores, with_ceiling

log = logging.getLogger(__name__)


# A dense-mode epoch on cached features costs about a twelfth of a full-mode one (scripts/bench_transfer.py).
DEFAULT_EPOCHS = {"dense": 120, "full": 15, "ridge": 1}  # ridge mode is solved in one step
# Dense and full mode can hold out a share of the training faces to pick their best epoch (never a test face).
# Off by default: on faces of OMI's training half that neither recipe trained on, a tenth held out to pick the
# epoch gave a lower r than the paper's 120 epochs on every training face in 7 of 10 base/attribute pairs.
VALIDATION_FRACTION = 0.0
MIN_VALIDATION_FACES = 5  # fewer make the pick a coin toss: such small runs keep their last epoch
MONITOR = "validation_mae"
# Full mode: conv1..conv3 step at this fraction of the learning rate of fc6..the head.
FEATURE_LR_SCALE = 0.1
WARMUP_DIR = "warmup"
SCHEDULES = ("cosine", "constant")
WARMUP_WAIT = 3600.0  # seconds the other workers of a cluster wait for the chief's warm-up


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
    validation: float = VALIDATION_FRACTION  # share of the training faces that picks the best epoch (0: the last)
    feature_lr_scale: float = FEATURE_LR_SCALE  # full mode: the conv layers' share of the learning rate
    warmup_epochs: int | None = None  # full mode: dense-mode epochs of fc6..the head first (None: dense's default)
    schedule: str = "constant"  # the learning rate over a stage's epochs: "constant" (paper's) or "cosine" (to 0)
    full_learning_rate: float | None = None  # full mode after a warm-up: fc6..the head's rate (None: a tenth of it)

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.validation < 0.5:
            raise ValueError(f"validation must be a share of the training faces in [0, 0.5), got {self.validation}")
        if not 0 <= self.feature_lr_scale <= 1:
            raise ValueError(f"feature_lr_scale must be in [0, 1], got {self.feature_lr_scale}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}: expected {' or '.join(SCHEDULES)}")
        if self.warmup_epochs is None:
            self.warmup_epochs = DEFAULT_EPOCHS["dense"]
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
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


def learning_rate_at(config: TrainConfig, rate: float, epoch: int, epochs: int) -> float:
    """The learning rate of `epoch` (0-based) of a stage of `epochs` that starts at `rate`: constant, or a cosine
    down towards 0."""
    if config.schedule == "constant":
        return rate
    return rate * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def _schedule(config: TrainConfig, rate: float, epochs: int) -> keras.callbacks.Callback:
    # A function of the epoch alone, so that a resumed run goes on where it stopped.
    return keras.callbacks.LearningRateScheduler(lambda epoch: learning_rate_at(config, rate, epoch, epochs))


def whole_net_rate(config: TrainConfig) -> float:
    """Full mode's learning rate of fc6..the head: after a warm-up, gentler than the head's own training."""
    if not config.warmup_epochs:
        return config.learning_rate
    return config.full_learning_rate if config.full_learning_rate is not None else config.learning_rate / 10


def validation_slice(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the training faces to fit on and of the validation slice, seeded; no slice when it would
    hold fewer than MIN_VALIDATION_FACES faces."""
    size = int(round(fraction * count))
    everything = np.arange(count)
    if size < MIN_VALIDATION_FACES or count - size < 2:
        return everything, everything[:0]
    # Its own stream of the seed: the slice does not change when the split's draw does.
    order = np.random.default_rng([seed, 7]).permutation(count)
    return np.sort(order[size:]), np.sort(order[:size])


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


def _compile(model: keras.Model, config: TrainConfig, jit_compile: bool | str = "auto",
             group_scales: dict[str, float] | None = None) -> None:
    model.compile(
        optimizer=GroupSGD(config.learning_rate, momentum=config.momentum, nesterov=True, group_scales=group_scales),
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
    folder is written to, so a bad input leaves nothing behind. Dense and full mode seed Keras, NumPy and Python
    (`keras.utils.set_random_seed(config.seed)`), so that a run is repeatable. `split` is (its name, face indices of "train"
    and "test") where not the seeded 50/50 split (a fold of cross-validation). With a `cluster` (full mode
    only), every worker trains on its share of each global batch and the chief alone writes `run_dir`; the
    other workers return no metrics.
    """
    started = time.perf_counter()
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
    # Ridge mode picks its penalty by leave-one-out over every training face; the others pick an epoch.
    fit_at, val_at = validation_slice(len(train_index), 0.0 if config.mode == "ridge" else config.validation,
                                      config.seed)
    val_index, val_y = train_index[val_at], train_y[val_at]
    train_index, train_y = train_index[fit_at], train_y[fit_at]
    notes = [n for n in (data.note(a) for a in config.attributes) if n]
    if state is None and writer:
        run = Run.start(run_dir, {"kind": "train", **dataclasses.asdict(config), "framing": framing.to_json(),
                                  "columns": columns, "data": data_spec or {"name": data.name}, "dataset": data.name,
                                  "scale": data.scale, "notes": notes, "problems": data.problems}, identity)
        parts = {"train": train_index, "validation": val_index, "test": test_index}
        run.write_split({name: [data.ids[i] for i in index] for name, index in parts.items() if len(index)})
    log.info("%s: %d train%s / %d test faces for %s (%s framing)", data.name, len(train_index),
             f" + {len(val_index)} validation" if len(val_index) else "", len(test_index), ", ".join(columns),
             framing.name)

    def make_regressor() -> keras.Model:
        return build_attribute_regressor(base, columns, [data.scale] * len(columns), config.mode,
                                         initial_scores=train_y.mean(axis=0), framing=framing.to_json(),
                                         dropout=config.dropout)

    faces = TrainingFaces(images, [position[i] for i in train_index], train_y, [position[i] for i in val_index],
                          val_y, [position[i] for i in test_index], test_y)
    regressor = make_regressor()
    warming = config.mode == "full" and config.warmup_epochs and state is None and writer
    if config.mode in ("dense", "ridge") or warming:
        # The frozen features of every framed face, computed once and cached by weights and pixels: the 50/50
        # split, each fold of a cross-validation and full mode's warm-up then share them. Mirror images as
        # full mode's augmentation.
        faces.features = pool5_features(feature_model(regressor), images, cache_dir, progress)
    if config.mode == "ridge":
        trained = _fit_ridge(regressor, faces, run_dir)
    elif config.mode == "dense":
        trained = _fit_dense(faces, run_dir, config, identity, state, progress, keep_checkpoints, regressor)
    else:
        trained = _fit_full(make_regressor, faces, run_dir, config, identity, state, progress, keep_checkpoints,
                            cluster)
    if not writer:
        return {}
    copy_weights(trained, regressor)
    atomic_save_model(regressor, run_dir / "model.keras")
    # The wall time of this call: a resumed run counts only the part that finished it.
    extra = {"seconds": round(time.perf_counter() - started, 1)}
    if faces.has_validation:
        extra["selected"] = selection(run_dir)
    return evaluate_run(regressor, data, run_dir, columns, train_y, test_index, faces.crops("test"), test_y, data_spec,
                        extra)


@dataclasses.dataclass
class TrainingFaces:
    """A run's framed faces by part: positions into `images` and the targets of the fit, validation and test faces."""

    images: np.ndarray  # every framed face, (N, 256, 256, 3) uint8
    train_at: list[int]
    train_y: np.ndarray
    val_at: list[int]
    val_y: np.ndarray
    test_at: list[int]
    test_y: np.ndarray
    features: tuple[np.ndarray, np.ndarray] | None = None  # pool5 of every face and of its mirror image
    _crops: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def has_validation(self) -> bool:
        """Whether a validation slice picks the best epoch."""
        return len(self.val_at) > 0

    def _parts(self) -> dict[str, tuple[list[int], np.ndarray]]:
        parts = {"train": (self.train_at, self.train_y), "test": (self.test_at, self.test_y)}
        if self.has_validation:
            parts["validation"] = (self.val_at, self.val_y)
        return parts

    def crops(self, part: str) -> np.ndarray:
        """The centre crops (model input) of one part's faces, made once."""
        if part not in self._crops:
            self._crops[part] = center_crops(self.images[self._parts()[part][0]])
        return self._crops[part]

    def image_splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each part's centre crops and targets, for the per-epoch MAE of a whole net."""
        return {name: (self.crops(name), y) for name, (_, y) in self._parts().items()}

    def feature_splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each part's pool5 features and targets, for the per-epoch MAE of a head."""
        center = self.features[0]
        return {name: (center[at], y) for name, (at, y) in self._parts().items()}


def feature_dataset(center: np.ndarray, mirrored: np.ndarray, targets: np.ndarray, batch: int, seed: int
                    ) -> tf.data.Dataset:
    """Shuffled batches of cached features: each face once per epoch, its mirror image's features half the time."""
    data = tf.data.Dataset.from_tensor_slices((center, mirrored, targets))
    data = data.shuffle(len(targets), seed=seed, reshuffle_each_iteration=True)
    # Like the random mirroring of full-mode training, drawn per face and epoch from the seed alone, so that two
    # processes (the workers of one run) draw the same.
    coins = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    pick = lambda row, coin: (tf.where(coin % 2 == 0, row[0], row[1]), row[2])  # noqa: E731
    return tf.data.Dataset.zip(data, coins).map(pick).batch(batch).prefetch(tf.data.AUTOTUNE)


def _best_of_run(run_dir: Path, model: keras.Model, monitor: str | None) -> keras.Model:
    """The run's model at its best epoch by `monitor` (its last epoch where nothing is monitored)."""
    if monitor is None:
        return model
    state = read_state(run_dir)
    best = best_epoch(state["history"], monitor)
    if best is None or best == state["epoch"]:
        return model
    log.info("%s: epoch %d of %d has the lowest %s", run_dir.name, best, state["epoch"], monitor)
    return keras.models.load_model(run_dir / checkpoint_name(best))


def _best_score(run_dir: Path, monitor: str) -> float | None:
    state = read_state(run_dir)
    best = best_epoch(state["history"], monitor) if state else None
    return None if best is None else float(next(r[monitor] for r in state["history"] if r["epoch"] == best))


def selection(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """Which model a run with a validation slice kept: the stage ("head", "warm-up" or "whole net"), its epoch and
    its validation MAE; None for a run without one."""
    run_dir = Path(run_dir)
    state = read_state(run_dir)
    best = best_epoch(state["history"], MONITOR) if state else None
    if best is None:
        return None
    full = Run.open(run_dir).config.get("mode") == "full"
    chosen = {"stage": "whole net" if full else "head", "epoch": best,
              MONITOR: _best_score(run_dir, MONITOR)}
    warm = _best_score(run_dir / WARMUP_DIR, MONITOR)
    # The warm start competes too: when no epoch of the whole net beats it on the validation slice, it is kept.
    if warm is not None and warm <= chosen[MONITOR]:
        chosen = {"stage": "warm-up", "epoch": best_epoch(read_state(run_dir / WARMUP_DIR)["history"], MONITOR),
                  MONITOR: warm}
    return chosen


def _fit_dense(faces: TrainingFaces, run_dir: Path, config: TrainConfig, identity: dict, state: dict | None,
               progress: bool, keep: int, regressor: keras.Model, epochs: int | None = None,
               description: str | None = None) -> keras.Model:
    center, mirrored = faces.features
    epochs = epochs or config.epochs
    if state is None:
        # Seeded (dropout masks included): the same faces and config give the same head, so a full-mode run's
        # warm-up is exactly the dense-mode run of its cell.
        keras.utils.set_random_seed(config.seed)
        model = head_model(regressor)
        _compile(model, config, jit_compile=True)  # the small head trains about 1.6x faster under XLA
        initial_epoch, history = 0, []
    else:
        model = keras.models.load_model(run_dir / state["checkpoint"])
        initial_epoch, history = int(state["epoch"]), state["history"]
    monitor = MONITOR if faces.has_validation else None
    evaluation = SplitMAE(faces.feature_splits(), config.batch_size, identity["attributes"])
    callbacks = [_schedule(config, config.learning_rate, epochs), evaluation,
                 EpochCheckpoint(run_dir, identity, history, keep=keep, monitor=monitor)]
    if progress:  # after the checkpoint, so that the bar never runs ahead of what is saved
        callbacks.append(EpochProgress(epochs, initial_epoch, description or f"training {run_dir.name}"))
    if initial_epoch < epochs:
        model.fit(feature_dataset(center[faces.train_at], mirrored[faces.train_at], faces.train_y, config.batch_size,
                                  config.seed + initial_epoch),
                  epochs=epochs, initial_epoch=initial_epoch, callbacks=callbacks, shuffle=False,
                  verbose=0 if progress else 2)
    return _best_of_run(run_dir, model, monitor)


def _fit_ridge(regressor: keras.Model, faces: TrainingFaces, run_dir: Path) -> keras.Model:
    from psyattr.ridge import fit_ridge, root_features

    center, mirrored = faces.features
    # The head learns from the mean of each face's features and its mirror image's.
    fit = fit_ridge(root_features((center[faces.train_at] + mirrored[faces.train_at]) / 2,
                                  regressor.get_layer("root").offset), faces.train_y)
    regressor.get_layer("fc8").set_weights([fit.kernel.astype(np.float32), fit.bias.astype(np.float32)])
    columns = regressor.get_layer("scores").output_names
    record = {c: {"penalty": p, "loo_mse": e} for c, p, e in zip(columns, fit.penalties, fit.loo_mse)}
    atomic_write_text(run_dir / "ridge.json", json.dumps(record, indent=2))
    log.info("ridge penalties (leave-one-out over %d training faces): %s", len(faces.train_y),
             ", ".join(f"{c} {p:g}" for c, p in zip(columns, fit.penalties)))
    return regressor


def _warm_up(make_regressor, faces: TrainingFaces, run_dir: Path, config: TrainConfig, identity: dict, progress: bool,
             keep: int, cluster: Cluster | None) -> keras.Model:
    """fc6..the head trained as dense mode trains them (its own resumable run in `warmup/`; its best epoch where a
    validation slice picks one): where the whole net starts, so that the new head's first large errors never
    reach the pretrained features."""
    folder = run_dir / WARMUP_DIR
    done = folder / "model.keras"
    if writes_run(cluster):
        if not done.exists():
            head = _fit_dense(faces, folder, config, {**identity, "stage": WARMUP_DIR}, read_state(folder), progress,
                              keep, make_regressor(), config.warmup_epochs, f"warming up the head of {run_dir.name}")
            atomic_save_model(head, done)
    else:
        # The other workers start from the chief's warm-up: the very same weights, not a recomputation.
        deadline = time.monotonic() + WARMUP_WAIT
        while not done.exists():
            if time.monotonic() > deadline:
                raise DistributedError(f"worker {cluster.index} of {cluster.workers}: the chief wrote no {done} within "
                                       f"{WARMUP_WAIT:g} s; start every worker again with --resume")
            time.sleep(1.0)
    return keras.models.load_model(done)


def _fit_full(make_regressor, faces: TrainingFaces, run_dir: Path, config: TrainConfig, identity: dict,
              state: dict | None, progress: bool, keep: int, cluster: Cluster | None = None) -> keras.Model:
    precision = resolve_precision(config.precision)
    warm = None
    if state is None and config.warmup_epochs:
        warm = _warm_up(make_regressor, faces, run_dir, config, identity, progress, keep, cluster)
    with dtype_policy(precision), strategy_scope(cluster):
        if state is None:
            model = make_regressor()  # built under the training precision
            if warm is not None:
                copy_weights(warm, model)
            _compile(model, config, group_scales={"features": config.feature_lr_scale})
            initial_epoch, history = 0, []
        else:
            model = keras.models.load_model(run_dir / state["checkpoint"])
            initial_epoch, history = int(state["epoch"]), state["history"]
    monitor = MONITOR if faces.has_validation else None
    # Every worker steps the learning rate.
    callbacks: list[keras.callbacks.Callback] = [_schedule(config, whole_net_rate(config), config.epochs)]
    if writes_run(cluster):
        callbacks += [SplitMAE(faces.image_splits(), config.batch_size, identity["attributes"]),
                      EpochCheckpoint(run_dir, identity, history, keep=keep, monitor=monitor)]
        if progress:
            callbacks.append(EpochProgress(config.epochs, initial_epoch, f"training {run_dir.name}"))
    if initial_epoch < config.epochs:
        train_images = faces.images[faces.train_at]
        steps = math.ceil(len(train_images) / config.batch_size)
        batches = lambda: train_dataset(train_images, faces.train_y, config.batch_size,  # noqa: E731
                                        config.seed + initial_epoch)
        if cluster is not None:
            fit_distributed(model, cluster, batches, keras.losses.mean_squared_error, steps, config.epochs,
                            initial_epoch, callbacks)
        else:
            model.fit(batches(), steps_per_epoch=steps, epochs=config.epochs, initial_epoch=initial_epoch,
                      shuffle=False, callbacks=callbacks, verbose=0 if progress else 2)
    if not writes_run(cluster) or monitor is None:
        return model
    if selection(run_dir)["stage"] == "warm-up":
        log.info("%s: no epoch of the whole net beat the warmed-up head on the validation slice; keeping that",
                 run_dir.name)
        return keras.models.load_model(run_dir / WARMUP_DIR / "model.keras")
    return _best_of_run(run_dir, model, monitor)


def evaluate_run(model: keras.Model, data: RatedFaces, out_dir: Path, columns: Sequence[str], train_y: np.ndarray,
                 test_index: np.ndarray, test_crops: np.ndarray, test_y: np.ndarray,
                 data_spec: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score the test half per attribute; write metrics.json and predictions.csv into `out_dir`.

    Where the data set has single ratings (OMI), each attribute's raters' split-half r over the same test
    faces is the `ceiling`, and `r_fraction` is the model's r as a fraction of it.
    """
    from psyattr.ceiling import ceilings

    out_dir.mkdir(parents=True, exist_ok=True)
    predicted = Forward(model, 32)(test_crops)
    metrics: dict[str, Any] = {"dataset": data.name, "scale": list(data.scale), "test_count": int(len(test_y)),
                               **(extra or {}), "attributes": {}}
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
    # Re-scoring does not retrain: the training time of the run's own metrics stays.
    trained = {k: v for k, v in (run.metrics or {}).items() if k in ("seconds", "selected")} if own_data else None
    return evaluate_run(model, data, out_dir, columns, train_y, test_index[kept], center_crops(images), test_y[kept],
                        data_spec, trained)


def evaluation_dir(run_dir: str | os.PathLike, data: RatedFaces | None = None) -> Path:
    """Where `evaluate_saved_run` writes: the run itself for its own data, `evaluations/<data name>/` for other data."""
    if data is None:
        return Path(run_dir)
    return Path(run_dir) / "evaluations" / (re.sub(r"[^A-Za-z0-9._-]+", "_", data.name).strip("_") or "data")


def regressor_columns(model: keras.Model) -> list[str]:
    """The attribute columns a trained regressor scores."""
    return [layer for layer in model.layers if isinstance(layer, AttributeScores)][-1].output_names


__all__ = ["PAPER_SCALE", "TrainConfig", "evaluate_run", "evaluate_saved_run", "evaluation_dir", "train_regressor"]
