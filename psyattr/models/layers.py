"""Custom Keras layers of the Levi-Hassner nets: Caffe's input preprocessing and Caffe's LRN."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

from psyattr.ridge import ROOT_OFFSET

# Per-channel BGR means of Levi & Hassner's mean.binaryproto (RESEARCH.md).
LEVI_HASSNER_BGR_MEAN = (78.426, 87.769, 114.896)


@keras.saving.register_keras_serializable(package="psyattr")
class CaffePreprocess(keras.layers.Layer):
    """RGB pixels in 0..255 to Caffe's input: channels reversed to BGR, minus the BGR means.

    `framing` records how the faces this model learned from were framed (`psyattr.faces.framing`), as a JSON
    dict: the model's input contract, saved with it so that every path can frame a photo the same way.
    """

    def __init__(self, bgr_mean: Sequence[float] = LEVI_HASSNER_BGR_MEAN, framing: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        if len(bgr_mean) != 3:
            raise ValueError(f"bgr_mean must hold 3 values (B, G, R), got {len(bgr_mean)}: {bgr_mean!r}")
        if framing is not None and not (isinstance(framing, dict) and "name" in framing):
            raise ValueError(f"framing must be a framing's JSON dict (with a 'name'), got {framing!r}")
        self.bgr_mean = tuple(float(m) for m in bgr_mean)
        self.framing = None if framing is None else dict(framing)

    def call(self, inputs):
        bgr = inputs[..., ::-1]
        return bgr - tf.constant(self.bgr_mean, dtype=bgr.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "bgr_mean": list(self.bgr_mean), "framing": self.framing}


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


@keras.saving.register_keras_serializable(package="psyattr")
class AttributeScores(keras.layers.Layer):
    """Named attribute scores in [0, 1]: values are clipped to [0, 1], the gradient passes straight through.

    Each attribute keeps the rating scale of its data set (`scale_low`..`scale_high`, e.g. 1..9 or
    0..100), so that scores can be reported on it: `rating = low + score * (high - low)`. LRP starts
    below this layer, at the unclipped score.
    """

    is_output_activation = True

    def __init__(self, names: Sequence[str], scale_low: Sequence[float], scale_high: Sequence[float], **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.output_names = [str(n) for n in names]
        self.scale_low = [float(v) for v in scale_low]
        self.scale_high = [float(v) for v in scale_high]
        if not (len(self.output_names) == len(self.scale_low) == len(self.scale_high)) or not self.output_names:
            raise ValueError("AttributeScores needs one name, scale_low and scale_high per attribute")
        if any(lo >= hi for lo, hi in zip(self.scale_low, self.scale_high)):
            raise ValueError(f"each scale_low must be below its scale_high, got {self.scale_low} and {self.scale_high}")

    def call(self, inputs):
        clipped = tf.clip_by_value(inputs, 0.0, 1.0)
        return inputs + tf.stop_gradient(clipped - inputs)

    def to_rating_scale(self, scores):
        """Map [0, 1] scores `(N, attributes)` to each attribute's rating scale."""
        low = tf.constant(self.scale_low, dtype=scores.dtype)
        return low + scores * (tf.constant(self.scale_high, dtype=scores.dtype) - low)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "names": self.output_names, "scale_low": self.scale_low,
                "scale_high": self.scale_high}


@keras.saving.register_keras_serializable(package="psyattr")
class RootFeatures(keras.layers.Layer):
    """`sqrt(relu(x) + offset) - sqrt(offset)`: compresses the heavy tail of pooled ReLU features for a linear head.

    The offset keeps the gradient finite at zero, where most pool5 units sit, so gradient methods stay defined.
    """

    def __init__(self, offset: float = ROOT_OFFSET, **kwargs):
        super().__init__(**kwargs)
        if offset <= 0:
            raise ValueError(f"RootFeatures needs a positive offset, got {offset}")
        self.offset = float(offset)

    def call(self, inputs):
        return tf.sqrt(tf.nn.relu(inputs) + self.offset) - self.offset ** 0.5

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "offset": self.offset}
