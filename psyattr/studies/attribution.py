"""Attribution methods behind one interface: `method(images, targets) -> heatmaps (N, H, W)`.

Every registered LRP composite and gradient x input (through `LRPExplainer`), tf-keras-vis Saliency,
SmoothGrad and Grad-CAM, and a random heatmap as the baseline. All of them explain the pre-activation
output of the Dense layer `fc8` (logits of a base net, unclipped scores of an attribute regressor).
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from psyattr.lrp import COMPOSITES, LRPExplainer
from psyattr.lrp.heatmap import heatmap
from psyattr.models.outputs import Target, output_names
from psyattr.models.outputs import resolve_targets as resolve_outputs

AttributionMethod = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""Takes images `(N, H, W, C)` and output indices `(N,)`; returns heatmaps `(N, H, W)`, higher = more relevant."""

PREACTIVATION_LAYER = "fc8"
TF_KERAS_VIS_METHODS = ("saliency", "smoothgrad", "gradcam")
OTHER_METHODS = ("gradient_x_input", *TF_KERAS_VIS_METHODS, "random")
DEFAULT_PENULTIMATE_LAYER = "conv3"
RANDOM_STREAM = 0  # the random heatmaps' share of the seed (region perturbation noise is another)


def method_names() -> tuple[str, ...]:
    """Every method `build_attribution_method` knows: the LRP composites registered now, then the others."""
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


def build_score_function(model: keras.Model, jit_compile: bool = True) -> Callable[[np.ndarray], np.ndarray]:
    """A function from images `(N, H, W, C)` to all pre-activation outputs `(N, K)` of `model`'s `fc8`, float32."""
    sub_model = preactivation_model(model)
    signature = [tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32)]
    # One trace for any batch size (XLA still compiles once per batch shape).
    forward = tf.function(lambda x: tf.cast(sub_model(x, training=False), tf.float32), input_signature=signature,
                          jit_compile=jit_compile)
    return lambda images: forward(tf.constant(images, tf.float32)).numpy()


def check_images(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """Validate a batch against `model`'s input shape and return it as float32, or raise ValueError."""
    expected = tuple(model.inputs[0].shape[1:])
    shape = "(N, " + ", ".join(map(str, expected)) + ")"
    array = np.asarray(images)
    if not (np.issubdtype(array.dtype, np.floating) or array.dtype == np.uint8):
        raise ValueError(f"images must be float (or uint8) RGB pixels in 0..255, got dtype {array.dtype}")
    if array.ndim == len(expected) and array.shape == expected:
        raise ValueError(f"images must be a batch {shape}, got one image {array.shape}: add a batch axis "
                         "(images[None])")
    if array.shape[1:] != expected or array.ndim != len(expected) + 1:
        raise ValueError(f"images must have shape {shape} (RGB, 0..255) for model {model.name!r}, got {array.shape}")
    if len(array) == 0:
        raise ValueError("images is an empty batch")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise ValueError("images contain NaN or infinite values")
    return array


def resolve_targets(model: keras.Model, target: Target, count: int,
                    scores: Callable[[], np.ndarray] | None = None) -> np.ndarray:
    """Per-image indices into `fc8` from an index, an output name, one per image, or None (each image's top output).

    `scores` is called for None only, and returns the pre-activation outputs `(count, K)`.
    """
    num_outputs = int(preactivation_model(model).outputs[0].shape[-1])
    return resolve_outputs(output_names(model, num_outputs), target, count, scores, f"model {model.name!r}")


def image_seed(seed: int, image: np.ndarray, stream: int = 0) -> np.random.Generator:
    """A generator seeded by `seed`, a `stream` number and the image's pixels: the same image gets the same draws
    in any batch, and different streams never share draws."""
    pixels = zlib.crc32(np.ascontiguousarray(image, dtype=np.float32).tobytes())
    return np.random.default_rng([seed, stream, pixels])


def _lrp_method(model: keras.Model, name: str, jit_compile: bool) -> AttributionMethod:
    explainer = LRPExplainer(model, name, jit_compile=jit_compile)
    return lambda images, targets: heatmap(explainer(images, targets).relevance)


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


def _saliency_method(model: keras.Model, smooth_samples: int, smooth_noise: float, seed: int) -> AttributionMethod:
    saliency_cls, _ = _import_tf_keras_vis()
    saliency = saliency_cls(preactivation_model(model), clone=False)

    def explain(images: np.ndarray, targets: np.ndarray) -> np.ndarray:
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

    return explain


def _gradcam_method(model: keras.Model, penultimate_layer: str) -> AttributionMethod:
    layer_names = [layer.name for layer in model.layers]
    if penultimate_layer not in layer_names:
        convs = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
        raise ValueError(f"Grad-CAM needs the layer {penultimate_layer!r}, which {model.name!r} lacks: give "
                         f"penultimate_layer, one of its convolutions ({', '.join(convs) or 'none found'})")
    _, gradcam_cls = _import_tf_keras_vis()
    gradcam = gradcam_cls(preactivation_model(model), clone=False)

    def explain(images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        cam = gradcam(_categorical_score(targets), images, penultimate_layer=penultimate_layer,
                      seek_penultimate_conv_layer=False, normalize_cam=False)
        return np.asarray(cam, dtype=np.float32)

    return explain


def _random_method(seed: int) -> AttributionMethod:
    def explain(images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        return np.stack([image_seed(seed, image, RANDOM_STREAM).random(image.shape[:2], dtype=np.float32)
                         for image in images])

    return explain


def build_attribution_method(model: keras.Model, name: str, *, seed: int = 0, jit_compile: bool = True,
                             smooth_samples: int = 20, smooth_noise: float = 0.2,
                             penultimate_layer: str = DEFAULT_PENULTIMATE_LAYER) -> AttributionMethod:
    """The attribution method `name` (see `method_names()`) for `model`, explaining the pre-activation `fc8`.

    `smooth_samples` and `smooth_noise` (noise std as a fraction of each image's value range) set SmoothGrad;
    `penultimate_layer` is the layer whose feature maps Grad-CAM weighs; `seed` fixes SmoothGrad's noise
    and the random heatmaps.
    """
    check_method_name(name)
    preactivation_model(model)  # fail early, and with the same message, for models without fc8
    if name in COMPOSITES or name == "gradient_x_input":
        return _lrp_method(model, name, jit_compile)
    if name == "saliency":
        return _saliency_method(model, 0, smooth_noise, seed)
    if name == "smoothgrad":
        if smooth_samples < 1:
            raise ValueError(f"smooth_samples must be at least 1 for SmoothGrad, got {smooth_samples}")
        return _saliency_method(model, smooth_samples, smooth_noise, seed)
    if name == "gradcam":
        return _gradcam_method(model, penultimate_layer)
    return _random_method(seed)


def build_attribution_methods(model: keras.Model, names: Sequence[str] | None = None,
                              **options) -> dict[str, AttributionMethod]:
    """Several methods by name (default: all of `method_names()`), built with the same `options`."""
    names = list(method_names() if names is None else names)
    for name in names:
        check_method_name(name)
    return {name: build_attribution_method(model, name, **options) for name in names}


__all__ = [
    "AttributionMethod", "DEFAULT_PENULTIMATE_LAYER", "OTHER_METHODS", "PREACTIVATION_LAYER", "TF_KERAS_VIS_METHODS",
    "Target",
    "build_attribution_method", "build_attribution_methods", "build_score_function", "check_images",
    "check_method_name", "image_seed", "method_names", "preactivation_model", "resolve_targets",
]
