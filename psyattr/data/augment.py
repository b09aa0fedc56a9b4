"""Training augmentation for what framing cannot remove: scale, rotation, shift, mirroring, light and colour.

Each batch of framed 256 px images becomes 227 px model inputs through one random similarity transform
per image (scale, rotation, shift about the frame's centre, mirrored at random) and random brightness,
contrast, saturation and grayscale. Everything runs as TensorFlow ops on the whole batch, seeded per batch,
so a run is reproducible and a resumed run draws the same augmentations as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

from psyattr.data.images import CROP_SIZE, TRAIN_SIZE


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Ranges of the random changes: `scale` +-15 %, `rotation` +-10 degrees, `shift` +-14 px, and so on.

    `brightness` is a shift in units of the pixel range (0.15 = +-38 of 255), `contrast` and `saturation`
    scale factors in 1 +- the value, `grayscale` and `mirror` probabilities.
    """

    scale: float = 0.15
    rotation: float = 10.0
    shift: float = 14.0
    brightness: float = 0.15
    contrast: float = 0.3
    saturation: float = 0.3
    grayscale: float = 0.1
    mirror: float = 0.5

    def __post_init__(self):
        for name in ("scale", "brightness", "contrast", "saturation"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"augmentation {name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("grayscale", "mirror"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"augmentation {name} is a probability in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.rotation <= 45 or not 0 <= self.shift <= (TRAIN_SIZE - CROP_SIZE):
            raise ValueError(f"rotation must be 0..45 degrees and shift 0..{TRAIN_SIZE - CROP_SIZE} px, "
                             f"got {self.rotation} and {self.shift}")


LEVI_HASSNER = Augmentation(scale=0.0, rotation=0.0, shift=14.5, brightness=0.0, contrast=0.0, saturation=0.0,
                            grayscale=0.0, mirror=0.5)
"""Levi & Hassner's own augmentation: random 227 px crops of the 256 px frame and mirroring."""


def _uniform(seed, shape, low, high):
    return tf.random.stateless_uniform(shape, seed, low, high)


def _transforms(count: tf.Tensor, augmentation: Augmentation, seed: tf.Tensor) -> tf.Tensor:
    """Per image the 8 projective parameters mapping output (227 px) pixel indices to input (256 px) ones."""
    seeds = tf.random.experimental.stateless_split(seed, 5)
    scale = 1.0 + _uniform(seeds[0], [count], -augmentation.scale, augmentation.scale)
    angle = _uniform(seeds[1], [count], -1.0, 1.0) * (augmentation.rotation * math.pi / 180)
    shift = _uniform(seeds[2], [count, 2], -augmentation.shift, augmentation.shift)
    flip = tf.where(_uniform(seeds[3], [count], 0.0, 1.0) < augmentation.mirror, -1.0, 1.0)
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    # input = centre_in + R(angle) / scale @ diag(flip, 1) @ (output - centre_out) + shift, in pixel-centre
    # coordinates; the centre 227 crop (offset 14) is the identity case.
    centre_in = (TRAIN_SIZE - CROP_SIZE) // 2 + CROP_SIZE / 2 - 0.5
    centre_out = CROP_SIZE / 2 - 0.5
    a0, a1 = cos * flip, -sin
    b0, b1 = sin * flip, cos
    a2 = centre_in + shift[:, 0] - a0 * centre_out - a1 * centre_out
    b2 = centre_in + shift[:, 1] - b0 * centre_out - b1 * centre_out
    zeros = tf.zeros_like(a0)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def _colour(images: tf.Tensor, augmentation: Augmentation, seed: tf.Tensor) -> tf.Tensor:
    count = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 4)
    shape = [count, 1, 1, 1]
    weights = tf.constant([0.299, 0.587, 0.114])
    saturation = 1.0 + _uniform(seeds[0], shape, -augmentation.saturation, augmentation.saturation)
    saturation = tf.where(_uniform(seeds[1], shape, 0.0, 1.0) < augmentation.grayscale, 0.0, saturation)
    contrast = 1.0 + _uniform(seeds[2], shape, -augmentation.contrast, augmentation.contrast)
    brightness = _uniform(seeds[3], shape, -augmentation.brightness, augmentation.brightness) * 255.0
    # Saturation (towards the image's gray), contrast (about its mean) and brightness folded into one
    # per-image affine map of the pixel and its gray value: two passes over the batch instead of six.
    channel_means = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
    mean = tf.reduce_mean(channel_means, axis=-1, keepdims=True)
    gray_mean = tf.reduce_sum(channel_means * weights, axis=-1, keepdims=True)
    saturated_mean = saturation * mean + (1.0 - saturation) * gray_mean
    gray = tf.reduce_sum(images * weights, axis=-1, keepdims=True)
    out = (contrast * saturation) * images + (contrast * (1.0 - saturation)) * gray
    return tf.clip_by_value(out + ((1.0 - contrast) * saturated_mean + brightness), 0.0, 255.0)


def augment_batch(images: tf.Tensor, augmentation: Augmentation, seed: tf.Tensor) -> tf.Tensor:
    """Framed uint8 images `(N, 256, 256, 3)` to augmented float32 model inputs `(N, 227, 227, 3)`."""
    seed = tf.cast(seed, tf.int64)
    geometry_seed, colour_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    images = tf.cast(images, tf.float32)
    transforms = _transforms(tf.shape(images)[0], augmentation, geometry_seed)
    # Where a transform reaches past the frame, the frame's edge pixels are repeated.
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.constant([CROP_SIZE, CROP_SIZE]),
        fill_value=0.0, interpolation="BILINEAR", fill_mode="NEAREST")
    if augmentation.brightness or augmentation.contrast or augmentation.saturation or augmentation.grayscale:
        out = _colour(out, augmentation, colour_seed)
    return out
