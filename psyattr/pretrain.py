"""Pretraining the age and gender base nets with Levi & Hassner's recipe."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from psyattr.checkpoints import (EpochCheckpoint, EpochProgress, atomic_save_model, atomic_write_text, prepare_run_dir,
                                 read_state)
from psyattr.data.augment import Augmentation
from psyattr.data.images import CROP_SIZE, center_crop
from psyattr.data.labels import FaceRecord, labelled
from psyattr.data.pipeline import train_dataset
from psyattr.data.splits import stratified_split
from psyattr.distributed import Cluster, fit_distributed, strategy_scope, writes_run
from psyattr.faces.framing import DEFAULT_FRAMING, frame_images, get_framing
from psyattr.models.levi_hassner import CLASS_NAMES, build_base_model, build_levi_hassner, check_task
from psyattr.models.forward import Forward
from psyattr.models.metrics import classification_scores, confusion_matrix, one_off_accuracy
from psyattr.models.precision import dtype_policy, resolve_precision

log = logging.getLogger(__name__)

ARCHITECTURE = "levi_hassner"
# Levi & Hassner's initialisation: Gaussian weights (std per layer) and constant biases.
_INIT = {"conv1": (0.01, 0.0), "conv2": (0.01, 1.0), "conv3": (0.01, 0.0), "fc6": (0.005, 1.0),
         "fc7": (0.005, 1.0), "fc8": (0.01, 0.0)}


@dataclasses.dataclass
class PretrainConfig:
    """Hyper-parameters of a pretraining run (Levi & Hassner's recipe, scaled to epochs)."""

    task: str
    epochs: int = 30
    batch_size: int = 50
    learning_rate: float = 1e-3
    lr_step_epochs: int = 12
    lr_decay: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    dropout: float = 0.5
    seed: int = 0
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    precision: str = "auto"
    limit: int | None = None
    framing: str = DEFAULT_FRAMING
    # The ranges of `psyattr.data.augment.Augmentation`; None is Levi & Hassner's crops and mirroring only.
    augmentation: dict | None = dataclasses.field(default_factory=lambda: dataclasses.asdict(Augmentation()))

    def __post_init__(self) -> None:
        check_task(self.task)
        get_framing(self.framing)
        if self.augmentation is not None:
            Augmentation(**self.augmentation)  # refuses unknown names and ranges
        if self.epochs < 1 or self.batch_size < 1 or self.lr_step_epochs < 1:
            raise ValueError("epochs, batch_size and lr_step_epochs must be >= 1")
        self.split = tuple(float(f) for f in self.split)


def learning_rate_at(config: PretrainConfig, epoch: int) -> float:
    """Step decay: the base rate times `lr_decay` for every `lr_step_epochs` epochs done."""
    return config.learning_rate * config.lr_decay ** (epoch // config.lr_step_epochs)


def init_levi_hassner(model: keras.Model, seed: int) -> None:
    """Give a Levi-Hassner net its authors' Gaussian initialisation."""
    rng = np.random.default_rng(seed)
    for name, (std, bias) in _INIT.items():
        layer = model.get_layer(name)
        kernel, bias_var = layer.kernel, layer.bias
        kernel.assign(rng.normal(0.0, std, kernel.shape).astype("float32"))
        bias_var.assign(np.full(bias_var.shape, bias, dtype="float32"))


def split_records(records: Sequence[FaceRecord], config: PretrainConfig) -> dict[str, list[FaceRecord]]:
    """The seeded split, stratified by the task's label, into train / validation / test."""
    records = labelled(records, config.task)
    if config.limit:
        order = np.random.default_rng(config.seed).permutation(len(records))[: config.limit]
        records = [records[i] for i in sorted(order)]
    if len(records) < 3:
        raise ValueError(f"need at least 3 images labelled for {config.task!r}, got {len(records)}")
    parts = stratified_split([r.label(config.task) for r in records], config.split, config.seed)
    return {name: [records[i] for i in part] for name, part in zip(("train", "validation", "test"), parts)}


def _compile(model: keras.Model, config: PretrainConfig) -> None:
    metrics: list[Any] = ["accuracy"]
    if config.task == "age":
        metrics.append(one_off_accuracy)
    model.compile(
        optimizer=keras.optimizers.SGD(
            config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay
        ),
        loss="sparse_categorical_crossentropy",
        metrics=metrics,
    )


def _load_split(run_dir: Path, records: Sequence[FaceRecord], config: PretrainConfig) -> dict[str, list[FaceRecord]]:
    split_file = run_dir / "split.json"
    if split_file.exists():
        # A resumed run keeps the split it started with, whatever has changed in the data folder since.
        saved = json.loads(split_file.read_text())
        by_path = {str(r.path): r for r in records}
        missing = [p for part in saved.values() for p in part if p not in by_path]
        if missing:
            raise FileNotFoundError(f"{len(missing)} image(s) of the saved split are gone, e.g. {missing[0]}")
        return {name: [by_path[p] for p in paths] for name, paths in saved.items()}
    split = split_records(records, config)
    atomic_write_text(split_file, json.dumps({k: [str(r.path) for r in v] for k, v in split.items()}, indent=1))
    return split


def _same_split(run_dir: Path, records: Sequence[FaceRecord], config: PretrainConfig) -> dict[str, list[FaceRecord]]:
    # A worker other than the chief draws the seeded split itself: the chief's split.json may not be written yet.
    split_file = run_dir / "split.json"
    return _load_split(run_dir, records, config) if split_file.exists() else split_records(records, config)


class ValidationAccuracy(keras.callbacks.Callback):
    """`val_accuracy` at each epoch's end, for the multi-worker loop (Keras's fit computes it itself)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int):
        super().__init__()
        self.images, self.labels, self.batch_size = images, np.asarray(labels), batch_size

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            predicted = np.argmax(Forward(self.model, self.batch_size)(self.images), axis=-1)
            logs["val_accuracy"] = float(np.mean(predicted == self.labels))


def _decode_split(split: dict[str, list[FaceRecord]], config: PretrainConfig, cache_dir, progress: bool):
    task = config.task
    everything = [r for part in split.values() for r in part]
    # UTKFace and Adience have no landmark files: the detector finds each face to frame it.
    images, kept = frame_images([r.path for r in everything], config.framing, None, cache_dir, progress)
    position = {int(k): i for i, k in enumerate(kept)}
    out, start = {}, 0
    for name, part in split.items():
        index = [position[start + j] for j in range(len(part)) if start + j in position]
        labels = np.asarray([everything[start + j].label(task) for j in range(len(part)) if start + j in position])
        out[name] = (images[index], labels)
        start += len(part)
    return out


def pretrain(
    records: Sequence[FaceRecord],
    run_dir: str | os.PathLike,
    config: PretrainConfig,
    resume: bool = False,
    cache_dir: str | os.PathLike | None = None,
    keep_checkpoints: int = 3,
    tensorboard: bool = True,
    progress: bool = True,
    cluster: Cluster | None = None,
) -> dict[str, Any]:
    """Train a base net on `records` into `run_dir`; checkpoint each epoch; return the test metrics.

    With a `cluster`, every worker trains on its share of each global batch and the chief alone writes `run_dir`
    (the other workers read its split and return no metrics).
    """
    run_dir = Path(run_dir)
    precision = resolve_precision(config.precision)
    identity = {"kind": "pretrain", "task": config.task, "architecture": ARCHITECTURE, "framing": config.framing}
    writer = writes_run(cluster)
    state = prepare_run_dir(run_dir, identity, resume) if writer else read_state(run_dir) if resume else None
    if state is None and writer:
        atomic_write_text(run_dir / "config.json", json.dumps(dataclasses.asdict(config), indent=2))
    split = _load_split(run_dir, records, config) if writer else _same_split(run_dir, records, config)
    data = _decode_split(split, config, cache_dir, progress)
    (train_x, train_y), (val_x, val_y) = data["train"], data["validation"]
    if len(train_x) == 0:
        raise ValueError("no training image could be decoded")
    log.info("split: %s images (train/validation/test)", "/".join(str(len(v[0])) for v in data.values()))

    with dtype_policy(precision), strategy_scope(cluster):
        if state is None:
            model = build_levi_hassner(len(CLASS_NAMES[config.task]), f"{config.task}_net", dropout=config.dropout,
                                       framing=get_framing(config.framing).to_json())
            init_levi_hassner(model, config.seed)
            _compile(model, config)
            initial_epoch, history = 0, []
        else:
            model = keras.models.load_model(run_dir / state["checkpoint"])
            initial_epoch, history = int(state["epoch"]), state["history"]
            log.info("resuming %s from epoch %d", run_dir, initial_epoch)

    # Every worker steps the learning rate; only the chief writes.
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.LearningRateScheduler(lambda epoch: learning_rate_at(config, epoch))]
    if writer:
        if cluster is not None and len(val_x):
            callbacks.append(ValidationAccuracy(center_crop(val_x).astype(np.float32), val_y, config.batch_size))
        callbacks.append(EpochCheckpoint(run_dir, identity, history, keep=keep_checkpoints))
    if tensorboard and cluster is None:  # its summaries come from Keras's own fit
        callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), write_graph=False))
    steps = math.ceil(len(train_x) / config.batch_size)
    if progress and writer:
        callbacks.append(EpochProgress(config.epochs, initial_epoch, f"pretraining the {config.task} net", steps,
                                       ("accuracy", "val_accuracy")))
    augmentation = Augmentation(**config.augmentation) if config.augmentation is not None else None
    batches = lambda: train_dataset(train_x, train_y.astype(np.int32), config.batch_size,  # noqa: E731
                                    config.seed + initial_epoch, augmentation)
    if cluster is not None:
        if initial_epoch < config.epochs:
            fit_distributed(model, cluster, batches, keras.losses.sparse_categorical_crossentropy, steps,
                            config.epochs, initial_epoch, callbacks)
        if not writer:
            return {}
    elif initial_epoch < config.epochs:
        model.fit(
            batches(),
            steps_per_epoch=steps,
            validation_data=(center_crop(val_x).astype(np.float32), val_y) if len(val_x) else None,
            validation_batch_size=config.batch_size,
            epochs=config.epochs,
            initial_epoch=initial_epoch,
            callbacks=callbacks,
            verbose=0 if progress else 2,
            shuffle=False,
        )
    return finish_pretraining(model, run_dir, config, data)


def finish_pretraining(model: keras.Model, run_dir: Path, config: PretrainConfig, data: dict) -> dict[str, Any]:
    """Copy the trained weights into a float32 base net, save it, and score it on the held-out test split."""
    final = build_base_model(config.task, framing=get_framing(config.framing).to_json())
    final.set_weights(model.get_weights())
    atomic_save_model(final, run_dir / "model.keras")
    metrics: dict[str, Any] = {"task": config.task}
    for name in ("validation", "test"):
        images, labels = data[name]
        if not len(images):
            continue
        predicted = predict_classes(final, images, config.batch_size)
        metrics[name] = classification_scores(labels, predicted)
        metrics[f"{name}_oversampled"] = classification_scores(labels, predict_classes(final, images, oversample=True))
        if name == "test":
            matrix = confusion_matrix(labels, predicted, len(CLASS_NAMES[config.task]))
            metrics["confusion_matrix"] = matrix.tolist()
            from psyattr.plots import plot_confusion_matrix

            plot_confusion_matrix(matrix, CLASS_NAMES[config.task], run_dir / "confusion_matrix.png",
                                  title=f"{config.task} net, held-out test split ({len(labels)} images)")
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def _crops(images_256: np.ndarray, oversample: bool) -> list[np.ndarray]:
    if not oversample:
        return [center_crop(images_256)]
    # Levi & Hassner's over-sampling: the four corners and the centre, each also mirrored.
    size, margin = CROP_SIZE, images_256.shape[1] - CROP_SIZE
    corners = [images_256[:, top : top + size, left : left + size] for top in (0, margin) for left in (0, margin)]
    views = [center_crop(images_256), *corners]
    return views + [view[:, :, ::-1] for view in views]


def predict_classes(model: keras.Model, images_256: np.ndarray, batch_size: int = 50,
                    oversample: bool = False) -> np.ndarray:
    """Class indices for 256 px uint8 images: from the centre crop, or averaged over 10 crops (`oversample`)."""
    predicted = []
    forward = Forward(model, batch_size)
    for start in range(0, len(images_256), batch_size):
        chunk = images_256[start : start + batch_size]
        probabilities = sum(forward(view) for view in _crops(chunk, oversample))
        predicted.append(np.argmax(probabilities, axis=-1))
    return np.concatenate(predicted) if predicted else np.zeros(0, int)
