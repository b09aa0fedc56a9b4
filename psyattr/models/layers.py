"""Custom Keras layers of the Levi-Hassner nets: Caffe's input preprocessing and Caffe's LRN."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

# Per-channel BGR means of Levi & Hassner's mean.binaryproto (RESEARCH.md).
LEVI_HASSNER_BGR_MEAN = (78.426, 87.769, 114.896)


@keras.saving.register_keras_serializable(package="psyattr")
class CaffePreprocess(keras.layers.Layer):
    """RGB pixels in 0..255 to Caffe's input: channels reversed to BGR, minus the BGR means."""

    def __init__(self, bgr_mean: Sequence[float] = LEVI_HASSNER_BGR_MEAN, **kwargs):
        super().__init__(**kwargs)
        if len(bgr_mean) != 3:
            raise ValueError(f"bgr_mean must hold 3 values (B, G, R), got {len(bgr_mean)}: {bgr_mean!r}")
        self.bgr_mean = tuple(float(m) for m in bgr_mean)

    def call(self, inputs):
        bgr = inputs[..., ::-1]
        return bgr - tf.constant(self.bgr_mean, dtype=bgr.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "bgr_mean": list(self.bgr_mean)}


@keras.saving.register_keras_serializable(package="psyattr")
class CaffeLRN(keras.layers.Layer):
    """Caffe's across-channel LRN: a / (1 + alpha / n * sum over n channels of a^2) ** beta."""

    def __init__(self, local_size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if local_size < 1 or local_size % 2 == 0:
            raise ValueError(f"local_size must be a positive odd number, got {local_size}")
        self.local_size = int(local_size)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.k = float(k)

    def call(self, inputs):
        # tf.nn.local_response_normalization does not divide alpha by the window size; Caffe does.
        x = tf.cast(inputs, tf.float32)
        y = tf.nn.local_response_normalization(
            x,
            depth_radius=(self.local_size - 1) // 2,
            bias=self.k,
            alpha=self.alpha / self.local_size,
            beta=self.beta,
        )
        return tf.cast(y, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "local_size": self.local_size,
            "alpha": self.alpha,
            "beta": self.beta,
            "k": self.k,
        }
