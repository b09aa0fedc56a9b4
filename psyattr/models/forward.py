"""A model's forward pass compiled once for every batch size, run over arrays in batches."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm


class Forward:
    """`Forward(model)(images)`: the model's outputs in inference mode, traced once (`model.predict` traces per call)."""

    def __init__(self, model: keras.Model, batch_size: int = 64):
        self.model = model
        self.batch_size = batch_size
        spec = tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32)
        self._function = tf.function(lambda x: model(x, training=False), input_signature=[spec])

    def __call__(self, inputs: np.ndarray, progress: str | None = None) -> np.ndarray:
        """Outputs for `inputs` (float32 `(N, ...)`), in batches; `progress` names a progress bar to show."""
        inputs = np.asarray(inputs, np.float32)
        starts = range(0, len(inputs), self.batch_size)
        parts = [np.asarray(self._function(tf.constant(inputs[i:i + self.batch_size])), np.float32)
                 for i in tqdm(starts, desc=progress, unit="batch", disable=progress is None, leave=False)]
        if not parts:
            return np.zeros((0, *self.model.outputs[0].shape[1:]), np.float32)
        return np.concatenate(parts)
