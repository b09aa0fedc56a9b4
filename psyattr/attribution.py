"""Attribution methods behind one interface: `build_explainer(model, name)(images, target) -> Explanation`.

Every registered LRP composite, the plain gradient and gradient x input come through `LRPExplainer`;
tf-keras-vis Saliency, SmoothGrad and Grad-CAM and a random map (the baseline) through `MapExplainer`. All of
them explain the pre-activation output of the Dense layer `fc8` (logits of a base net, unclipped scores of an
attribute regressor), check images with `psyattr.models.outputs.check_images` and resolve targets with its
one target rule, so that what one method accepts every method accepts.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Callable
from typing import Protocol

import keras
import numpy as np
import tensorflow as tf

from psyattr.explanation import Explanation
from psyattr.lrp import COMPOSITES, GRADIENT_METHODS, LRPExplainer
from psyattr.models.outputs import Target, check_images, output_names, resolve_targets

PREACTIVATION_LAYER = "fc8"
TF_KERAS_VIS_METHODS = ("saliency", "smoothgrad", "gradcam")
OTHER_METHODS = (*GRADIENT_METHODS, *TF_KERAS_VIS_METHODS, "random")
DEFAULT_PENULTIMATE_LAYER = "conv3"
RANDOM_STREAM = 0  # the random maps' share of the seed (region perturbation noise is another)


class AttributionMethod(Protocol):
    """What `build_explainer` returns: called with images `(N, H, W, C)` (RGB 0..255) and a target."""

    name: str

    def __call__(self, images: np.ndarray, target: Target = None) -> Explanation: ...


def method_names() -> tuple[str, ...]:
    """Every method `build_explainer` knows: the LRP composites registered now, then the others."""
    return (*COMPOSITES, *OTHER_METHODS)


def check_method_name(name: str) -> str:
    """Return `name` if it is a known attribution method, else raise a ValueError listing them."""
    if name not in method_names():
        raise ValueError(f"unknown attribution method {name!r}: expected one of {', '.join(method_names())}")
    return name


def preactivation_model(model: keras.Model) -> keras.Model:
    """The sub-model from `model`'s input to the output of its Dense layer `fc8` (logits or unclipped scores)."""
    try:
        layer = model.get_layer(PREACTIVATION_LAYER)
    except ValueError:
        layer = None
    if not isinstance(layer, keras.layers.Dense):
        found = "has no layer 'fc8'" if layer is None else f"has an 'fc8' layer of type {type(layer).__name__}"
        raise ValueError(f"model {model.name!r} {found}: expected a psyattr base net or attribute regressor, whose "
                         "pre-activation output (logits before 'prob', scores before 'scores') is the Dense layer "
                         "'fc8'")
    activation = getattr(layer.activation, "__name__", "linear")
    if activation != "linear":
        raise ValueError(f"layer 'fc8' of model {model.name!r} applies {activation!r}: expected a linear fc8, with "
                         "any softmax or clipping in a layer of its own")
    if len(model.inputs) != 1:
        raise ValueError(f"model {model.name!r} has {len(model.inputs)} inputs: expected one image input")
    return keras.Model(model.inputs, layer.output, name=f"{model.name}_fc8")


class ScoreFunction:
    """`model`'s pre-activation `fc8` outputs `(N, K)` for a batch of images, by one compiled forward pass.

    `with_outputs` also returns the model's own outputs (after its softmax or clipping) from the same pass.
    """

    def __init__(self, model: keras.Model, jit_compile: bool = True):
        sub_model = preactivation_model(model)
        both = keras.Model(model.inputs, [sub_model.outputs[0], model.outputs[0]], name=f"{model.name}_scores")
        self.model = model
        self.num_outputs = int(sub_model.outputs[0].shape[-1])
        self.names = output_names(model, self.num_outputs)
        self.input_shape = tuple(model.inputs[0].shape[1:])
        signature = [tf.TensorSpec((None, *self.input_shape), tf.float32)]
        # One trace for any batch size (XLA still compiles once per batch shape).
        self._forward = tf.function(lambda x: [tf.cast(y, tf.float32) for y in both(x, training=False)],
                                    input_signature=signature, jit_compile=jit_compile)

    def with_outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pre-activation outputs and the model's own outputs, both `(N, K)` float32."""
        z, outputs = self._forward(tf.constant(images, tf.float32))
        return z.numpy(), outputs.numpy()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.with_outputs(images)[0]


def build_score_function(model: keras.Model, jit_compile: bool = True) -> ScoreFunction:
    """A function from images `(N, H, W, C)` to all pre-activation outputs `(N, K)` of `model`'s `fc8`, float32."""
    return ScoreFunction(model, jit_compile)


def image_seed(seed: int, image: np.ndarray, stream: int = 0) -> np.random.Generator:
    """A generator seeded by `seed`, a `stream` number and the image's pixels: the same image gets the same draws
    in any batch, and different streams never share draws."""
    pixels = zlib.crc32(np.ascontiguousarray(image, dtype=np.float32).tobytes())
    return np.random.default_rng([seed, stream, pixels])


MapFunction = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""Checked images `(N, H, W, C)` float32 and output indices `(N,)` to one map per image `(N, H, W)`."""


class MapExplainer:
    """An attribution method that draws one map per image (Saliency, SmoothGrad, Grad-CAM, random), as an Explanation.

    Images are checked and targets resolved as `LRPExplainer` does; the scores and outputs come from one forward
    pass of the model, and the map is the Explanation's relevance `(N, H, W)`.
    """

    def __init__(self, model: keras.Model, name: str, maps: MapFunction, jit_compile: bool = True):
        self.model = model
        self.name = name
        self._maps = maps
        self._scores = ScoreFunction(model, jit_compile)
        self.output_names = self._scores.names
        self.input_shape = self._scores.input_shape

    def check_images(self, images: np.ndarray) -> np.ndarray:
        """Validate a batch against the model input and return it as float32, or raise ValueError."""
        return check_images(images, self.input_shape, f"model {self.model.name!r}")

    def resolve_targets(self, target: Target, count: int, images: np.ndarray | None = None) -> np.ndarray:
        """Per-image output indices from an index, an output name, one per image, or None (the top output)."""
        top = (lambda: self._scores(self.check_images(images))) if images is not None else None
        return resolve_targets(self.output_names, target, count, top, f"model {self.model.name!r}")

    def __call__(self, images: np.ndarray, target: Target = None) -> Explanation:
        """Explain `target` for each image: its pre-activation score, the map, and the model's outputs."""
        array = self.check_images(images)
        z, outputs = self._scores.with_outputs(array)
        targets = resolve_targets(self.output_names, target, len(array), lambda: z, f"model {self.model.name!r}")
        maps = np.asarray(self._maps(array, targets), np.float32)
        return Explanation(
            targets=targets, target_names=[self.output_names[i] for i in targets],
            scores=z[np.arange(len(targets)), targets], relevance=maps,
            outputs={name: outputs[:, k] for k, name in enumerate(self.output_names)},
            pre_activations={name: z[:, k] for k, name in enumerate(self.output_names)})


def _categorical_score(targets: np.ndarray):
    from tf_keras_vis.utils.scores import CategoricalScore

    return CategoricalScore([int(t) for t in targets])


def _import_tf_keras_vis():
    # tf-keras-vis imports scipy.ndimage.interpolation, deprecated in SciPy; the warning is not ours to fix.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import tf_keras_vis.gradcam
        import tf_keras_vis.saliency
    return tf_keras_vis.saliency.Saliency, tf_keras_vis.gradcam.Gradcam


def _saliency_maps(model: keras.Model, smooth_samples: int, smooth_noise: float, seed: int) -> MapFunction:
    saliency_cls, _ = _import_tf_keras_vis()
    # tf-keras-vis' ReplaceToLinear does nothing when the softmax is a layer of its own: explain fc8's sub-model.
    saliency = saliency_cls(preactivation_model(model), clone=False)

    def maps(images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        if smooth_samples == 0:
            return np.asarray(saliency(_categorical_score(targets), images, normalize_map=False))
        # SmoothGrad draws its noise from NumPy's global generator: seed it, then give the caller's state back.
        state = np.random.get_state()
        np.random.seed(seed)
        try:
            return np.asarray(saliency(_categorical_score(targets), images, smooth_samples=smooth_samples,
                                       smooth_noise=smooth_noise, normalize_map=False))
        finally:
            np.random.set_state(state)

    return maps


def _gradcam_maps(model: keras.Model, penultimate_layer: str) -> MapFunction:
    layer_names = [layer.name for layer in model.layers]
    if penultimate_layer not in layer_names:
        convs = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
        raise ValueError(f"Grad-CAM needs the layer {penultimate_layer!r}, which {model.name!r} lacks: give "
                         f"penultimate_layer, one of its convolutions ({', '.join(convs) or 'none found'})")
    _, gradcam_cls = _import_tf_keras_vis()
    gradcam = gradcam_cls(preactivation_model(model), clone=False)

    def maps(images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        return np.asarray(gradcam(_categorical_score(targets), images, penultimate_layer=penultimate_layer,
                                  seek_penultimate_conv_layer=False, normalize_cam=False), dtype=np.float32)

    return maps


def _random_maps(seed: int) -> MapFunction:
    def maps(images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        return np.stack([image_seed(seed, image, RANDOM_STREAM).random(image.shape[:2], dtype=np.float32)
                         for image in images])

    return maps


def build_explainer(model: keras.Model, name: str, *, seed: int = 0, jit_compile: bool = True,
                    smooth_samples: int = 20, smooth_noise: float = 0.2,
                    penultimate_layer: str = DEFAULT_PENULTIMATE_LAYER) -> AttributionMethod:
    """The attribution method `name` (see `method_names()`) for `model`, explaining the pre-activation `fc8`.

    `smooth_samples` and `smooth_noise` (noise std as a fraction of each image's value range) set SmoothGrad;
    `penultimate_layer` is the layer whose feature maps Grad-CAM weighs; `seed` fixes SmoothGrad's noise
    and the random maps.
    """
    check_method_name(name)
    preactivation_model(model)  # fail early, and with the same message, for models without fc8
    if name in COMPOSITES or name in GRADIENT_METHODS:
        return LRPExplainer(model, name, jit_compile=jit_compile)
    if name == "saliency":
        maps = _saliency_maps(model, 0, smooth_noise, seed)
    elif name == "smoothgrad":
        if smooth_samples < 1:
            raise ValueError(f"smooth_samples must be at least 1 for SmoothGrad, got {smooth_samples}")
        maps = _saliency_maps(model, smooth_samples, smooth_noise, seed)
    elif name == "gradcam":
        maps = _gradcam_maps(model, penultimate_layer)
    else:
        maps = _random_maps(seed)
    return MapExplainer(model, name, maps, jit_compile)


__all__ = [
    "AttributionMethod", "DEFAULT_PENULTIMATE_LAYER", "MapExplainer", "OTHER_METHODS", "PREACTIVATION_LAYER",
    "ScoreFunction", "TF_KERAS_VIS_METHODS", "build_explainer", "build_score_function", "check_method_name",
    "image_seed", "method_names", "preactivation_model",
]
