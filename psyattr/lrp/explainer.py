"""`LRPExplainer`: scores and pixel relevance for a batch of images in one forward pass, compiled once."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from psyattr.explanation import Explanation
from psyattr.lrp.composites import Composite, get_composite
from psyattr.lrp.graph import LRPError, RelevanceGraph
from psyattr.lrp.rules import Rule
from psyattr.models.outputs import Target, check_images, output_names, resolve_targets, target_indices

# Attribution methods computed through the same interface as the LRP composites, for comparison.
GRADIENT_METHODS = ("gradient", "gradient_x_input")


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
        self._outputs_fn = tf.function(self.graph.outputs, jit_compile=False,
                                       input_signature=[tf.TensorSpec((None, self.graph.num_outputs), tf.float32)])

    @property
    def name(self) -> str:
        """The composite's or method's name."""
        return self.composite.name if self.method == "lrp" else self.method

    def _explain(self, images: tf.Tensor, targets: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        if self.method == "lrp":
            return self.graph.explain(images, targets)
        z_all, targets, gradient = self.graph.input_gradient(images, targets)
        return z_all, targets, gradient * images if self.method == "gradient_x_input" else gradient

    def check_images(self, images: np.ndarray | tf.Tensor) -> np.ndarray:
        """Validate a batch against the model input and return it as float32, or raise ValueError."""
        return check_images(images, self.input_shape, f"model {self.model.name!r}")

    def resolve_targets(self, target: Target, count: int, images: np.ndarray | None = None) -> np.ndarray:
        """Per-image output indices from an index, an output name, one per image, or None (the top output)."""
        top = (lambda: self._scores_fn(tf.constant(images)).numpy()) if images is not None else None
        return resolve_targets(self.output_names, target, count, top, f"model {self.model.name!r}")

    def __call__(self, images: np.ndarray | tf.Tensor, target: Target = None) -> Explanation:
        """Explain `target` for each image: its pre-activation score, the relevance of every input value, the outputs."""
        array = self.check_images(images)
        # Each image's top output is found inside the graph, in the same forward pass that is explained.
        targets = target_indices(self.output_names, target, len(array), f"model {self.model.name!r}")
        z_all, chosen, relevance = self._explain_fn(tf.constant(array), tf.constant(targets, tf.int32))
        z_all, chosen = z_all.numpy().astype(np.float32), chosen.numpy()
        outputs = np.asarray(self._outputs_fn(tf.constant(z_all)), np.float32)
        return Explanation(
            targets=chosen, target_names=[self.output_names[i] for i in chosen],
            scores=z_all[np.arange(len(chosen)), chosen], relevance=relevance.numpy(),
            outputs={name: outputs[:, k] for k, name in enumerate(self.output_names)},
            pre_activations={name: z_all[:, k] for k, name in enumerate(self.output_names)})

    def predict(self, images: np.ndarray | tf.Tensor) -> np.ndarray:
        """The model's own outputs `(N, outputs)` (after softmax or the score activation)."""
        return np.asarray(self.model(tf.constant(self.check_images(images)), training=False))

    def scores(self, images: np.ndarray | tf.Tensor) -> np.ndarray:
        """All pre-activation outputs `(N, outputs)` of the explained layer."""
        return self._scores_fn(tf.constant(self.check_images(images))).numpy()


__all__ = ["Explanation", "LRPError", "LRPExplainer", "GRADIENT_METHODS"]
