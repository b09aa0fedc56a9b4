"""Metrics of Levi & Hassner's evaluation: exact and one-off (adjacent age group) accuracy."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="psyattr")
def one_off_accuracy(y_true, y_pred):
    """Share of predictions at most one class index from the true class (sparse labels, class scores)."""
    predicted = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
    true = ops.cast(ops.reshape(y_true, ops.shape(predicted)), "int32")
    return ops.cast(ops.abs(predicted - true) <= 1, "float32")


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts `[true, predicted]` of a classification."""
    matrix = np.zeros((num_classes, num_classes), dtype=int)
    np.add.at(matrix, (np.asarray(true, int), np.asarray(predicted, int)), 1)
    return matrix


def classification_scores(true: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Exact and one-off accuracy of integer class predictions."""
    true, predicted = np.asarray(true, int), np.asarray(predicted, int)
    return {
        "accuracy": float(np.mean(true == predicted)),
        "one_off_accuracy": float(np.mean(np.abs(true - predicted) <= 1)),
        "count": int(true.size),
    }
