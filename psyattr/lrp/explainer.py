"""`LRPExplainer`: scores and pixel relevance for a batch of images, compiled once per batch shape."""

from __future__ import annotations

from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from psyattr.lrp.composites import Composite, get_composite
from psyattr.lrp.graph import LRPError, RelevanceGraph
from psyattr.lrp.rules import Rule
from psyattr.models.outputs import Target, output_names, resolve_targets

# Attribution methods computed through the same interface as the LRP composites, for comparison.
GRADIENT_METHODS = ("gradient", "gradient_x_input")


class Explanation(NamedTuple):
    """Per image: the explained output's pre-activation score `(N,)` and its relevance `(N, H, W, C)`."""

    scores: np.ndarray
    relevance: np.ndarray


class LRPExplainer:
    """Explain a Keras model's outputs with LRP (or the input gradient), e.g. `LRPExplainer(model)(images, "happy")`."""

    def __init__(self, model: keras.Model, composite: str | Composite = "alpha2beta1", jit_compile: bool = True,
                 layer_rules: dict[str, Rule] | None = None, **composite_options):
        self.model = model
        self.method = composite if isinstance(composite, str) and composite in GRADIENT_METHODS else "lrp"
        composite_obj = get_composite("epsilon") if self.method != "lrp" else get_composite(composite, **composite_options)
        if layer_rules:
            composite_obj = composite_obj.with_layer_rules(layer_rules)
        self.composite = composite_obj
        self.graph = RelevanceGraph(model, composite_obj)
        self.output_names = output_names(model, self.graph.num_outputs)
        self.input_shape = tuple(model.inputs[0].shape[1:])
        self.jit_compile = jit_compile
        signature = [tf.TensorSpec((None, *self.input_shape), tf.float32), tf.TensorSpec((None,), tf.int32)]
        # One trace for any batch size; XLA compiles once per batch shape and caches it.
        self._explain_fn = tf.function(self._explain, input_signature=signature, jit_compile=jit_compile)
        self._scores_fn = tf.function(self.graph.scores, input_signature=signature[:1], jit_compile=jit_compile)

    @property
    def name(self) -> str:
        """The composite's or method's name."""
        return self.composite.name if self.method == "lrp" else self.method

    def _explain(self, images: tf.Tensor, targets: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        if self.method == "lrp":
            return self.graph.relevance(images, targets)
        scores, gradient = self.graph.input_gradient(images, targets)
        return scores, gradient * images if self.method == "gradient_x_input" else gradient

    def check_images(self, images: np.ndarray | tf.Tensor) -> np.ndarray:
        """Validate a batch against the model input and return it as float32, or raise ValueError."""
        array = np.asarray(images)
        if array.dtype == np.uint8 or np.issubdtype(array.dtype, np.floating):
            array = array.astype(np.float32, copy=False)
        else:
            raise ValueError(f"images must be float (or uint8) pixel values, got dtype {array.dtype}")
        if array.ndim == len(self.input_shape):
            raise ValueError(f"images must be a batch (N, {', '.join(map(str, self.input_shape))}), got one image "
                             f"{array.shape}: add a batch axis (images[None])")
        if array.ndim != len(self.input_shape) + 1 or array.shape[1:] != self.input_shape:
            raise ValueError(f"images must have shape (N, {', '.join(map(str, self.input_shape))}), got {array.shape}")
        if array.shape[0] == 0:
            raise ValueError("images is an empty batch")
        if not np.all(np.isfinite(array)):
            raise ValueError("images contain NaN or infinite values")
        return array

    def resolve_targets(self, target: Target, count: int, images: np.ndarray | None = None) -> np.ndarray:
        """Per-image output indices from an index, an output name, one per image, or None (the top output)."""
        top = (lambda: self._scores_fn(tf.constant(images)).numpy()) if images is not None else None
        return resolve_targets(self.output_names, target, count, top, f"model {self.model.name!r}")

    def __call__(self, images: np.ndarray | tf.Tensor, target: Target = None) -> Explanation:
        """Explain `target` for each image: its pre-activation score and the relevance of every input value."""
        array = self.check_images(images)
        targets = self.resolve_targets(target, len(array), array)
        scores, relevance = self._explain_fn(tf.constant(array), tf.constant(targets))
        return Explanation(scores.numpy(), relevance.numpy())

    def predict(self, images: np.ndarray | tf.Tensor) -> np.ndarray:
        """The model's own outputs `(N, outputs)` (after softmax or the score activation)."""
        return np.asarray(self.model(tf.constant(self.check_images(images)), training=False))

    def scores(self, images: np.ndarray | tf.Tensor) -> np.ndarray:
        """All pre-activation outputs `(N, outputs)` of the explained layer."""
        return self._scores_fn(tf.constant(self.check_images(images))).numpy()


__all__ = ["Explanation", "LRPError", "LRPExplainer", "GRADIENT_METHODS"]
