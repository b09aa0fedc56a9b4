"""The training input pipeline: random 227 px crops and mirroring of 256 px images, as tf.data."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from psyattr.data.augment import Augmentation, augment_batch
from psyattr.data.images import CROP_SIZE, center_crop


def augmented_batches(images: np.ndarray, labels: np.ndarray, batch: int, seed: int) -> Iterator[tuple]:
    """Endless shuffled batches of random crops, mirrored at random (Levi & Hassner's augmentation)."""
    rng = np.random.default_rng(seed)
    margin = images.shape[1] - CROP_SIZE
    while True:
        order = rng.permutation(len(images))
        for start in range(0, len(order), batch):
            index = np.sort(order[start : start + batch])
            offsets = rng.integers(0, margin + 1, size=(len(index), 2))
            flips = rng.random(len(index)) < 0.5
            out = np.empty((len(index), CROP_SIZE, CROP_SIZE, 3), dtype=np.float32)
            for k, (i, (top, left), flip) in enumerate(zip(index, offsets, flips)):
                crop = images[i, top : top + CROP_SIZE, left : left + CROP_SIZE]
                out[k] = crop[:, ::-1] if flip else crop
            yield out, labels[index]


def _shuffled_batches(images: np.ndarray, labels: np.ndarray, batch: int, seed: int) -> Iterator[tuple]:
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(images))
        for start in range(0, len(order), batch):
            index = np.sort(order[start : start + batch])
            yield images[index], labels[index]


def train_dataset(images: np.ndarray, labels: np.ndarray, batch: int, seed: int,
                  augmentation: Augmentation | None = None) -> tf.data.Dataset:
    """An endless tf.data stream of augmented batches, prefetched while the model trains.

    Without `augmentation`: Levi & Hassner's random 227 crops and mirroring; with it, `augment_batch` on each
    batch (seeded by `seed` and the batch's number).
    """
    labels = np.asarray(labels)
    label_spec = tf.TensorSpec((None, *labels.shape[1:]), tf.as_dtype(labels.dtype))
    if augmentation is None:
        spec = (tf.TensorSpec((None, CROP_SIZE, CROP_SIZE, 3), tf.float32), label_spec)
        return tf.data.Dataset.from_generator(
            lambda: augmented_batches(images, labels, batch, seed), output_signature=spec
        ).prefetch(tf.data.AUTOTUNE)
    spec = (tf.TensorSpec((None, *images.shape[1:]), tf.uint8), label_spec)
    batches = tf.data.Dataset.from_generator(lambda: _shuffled_batches(images, labels, batch, seed),
                                             output_signature=spec).enumerate()
    augment = lambda step, pair: (augment_batch(pair[0], augmentation, tf.stack([tf.constant(seed, tf.int64), step])),  # noqa: E731
                                  pair[1])
    # In order whatever options a strategy sets: the step's seed travels with its batch, but the step order matters.
    return batches.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


def center_crops(images_256: np.ndarray) -> np.ndarray:
    """Centre crops of 256 px uint8 images as float32 model input."""
    return center_crop(images_256).astype(np.float32)
