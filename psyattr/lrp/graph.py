"""The relevance graph: a forward pass that keeps every activation, then a reverse walk applying the rules."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import keras
import tensorflow as tf

from psyattr.lrp import checks
from psyattr.lrp.composites import Composite
from psyattr.lrp.rules import DEFAULT_STABILIZER, LinearOp, Rule, ZBox, stabilize
from psyattr.models.layers import CaffePreprocess


class LRPError(ValueError):
    """A model or request the relevance graph cannot handle."""


@dataclasses.dataclass
class _Node:
    layer: keras.layers.Layer
    kind: str  # "linear", "elementwise", "gradient", "add"
    inputs: list[int]
    output: int


def _tensor_ids(tensors) -> list[int]:
    return [id(t) for t in keras.tree.flatten(tensors)]


def _linear_apply(layer: keras.layers.Layer) -> Callable:
    if checks.is_conv_layer(layer):
        def apply(a, kernel, bias):
            out = keras.ops.conv(a, kernel, strides=layer.strides, padding=layer.padding,
                                 data_format=layer.data_format, dilation_rate=layer.dilation_rate)
            return out if bias is None else out + bias
    else:
        def apply(a, kernel, bias):
            out = keras.ops.matmul(a, kernel)
            return out if bias is None else out + bias
    return apply


def _classify(layer: keras.layers.Layer, is_start: bool) -> str | None:
    if checks.is_linear_layer(layer):
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            return None
        if is_start or checks.activation_name(layer) in checks.PASS_ACTIVATIONS:
            return "linear"
        return None
    if checks.is_elementwise_pass(layer):
        return "elementwise"
    if isinstance(layer, keras.layers.MaxPooling2D) and layer.data_format == "channels_last":
        return "maxpool"
    if checks.is_gradient_pass(layer):
        return "gradient"
    if isinstance(layer, keras.layers.Add):
        return "add"
    return None


def _pool_padding(size: int, pool: int, stride: int, padding: str) -> tuple[int, int, int]:
    """(output size, padding before, padding after) of one spatial axis, as Keras pools."""
    if padding == "valid":
        return (size - pool) // stride + 1, 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + pool - size, 0)
    return out, total // 2, total - total // 2


def max_pool_relevance(layer: keras.layers.MaxPooling2D, a: tf.Tensor, r_out: tf.Tensor) -> tf.Tensor:
    """Winner-take-all: each window's relevance goes to its largest input, shared equally between tied winners.

    Sharing ties makes the result the same on every backend (XLA and TensorFlow's own kernels pick
    different winners among equal values, e.g. in saturated image regions).
    """
    (ph, pw), (sh, sw) = layer.pool_size, layer.strides
    height, width = a.shape[1], a.shape[2]
    out_h, top, bottom = _pool_padding(height, ph, sh, layer.padding)
    out_w, left, right = _pool_padding(width, pw, sw, layer.padding)
    lowest = tf.constant(a.dtype.min, a.dtype)
    with tf.GradientTape() as tape:
        padded = tf.pad(a, [[0, 0], [top, bottom], [left, right], [0, 0]], constant_values=lowest)
        tape.watch(padded)
        views = [padded[:, dy : dy + sh * (out_h - 1) + 1 : sh, dx : dx + sw * (out_w - 1) + 1 : sw, :]
                 for dy in range(ph) for dx in range(pw)]
        winners = tf.reduce_max(tf.stack(views), axis=0)
        masks = [tf.cast(tf.equal(view, winners), a.dtype) for view in views]
        share = r_out / tf.add_n(masks)
        total = tf.add_n([tf.reduce_sum(view * tf.stop_gradient(mask * share)) for view, mask in zip(views, masks)])
    r_padded = tape.gradient(total, padded)
    return r_padded[:, top : top + height, left : left + width, :]


class RelevanceGraph:
    """LRP over a Keras functional (or Sequential) model; each Conv2D/Dense gets its composite's rule."""

    def __init__(self, model: keras.Model, composite: Composite):
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise LRPError(f"LRP needs a model with one input and one output, {model.name} has "
                           f"{len(model.inputs)} and {len(model.outputs)}")
        self.model = model
        self.input_id = id(model.inputs[0])
        producers: dict[int, keras.layers.Layer] = {}
        for layer in model.layers:
            if isinstance(layer, keras.Model):
                raise LRPError(f"layer {layer.name!r} is a nested model ({type(layer).__name__}): "
                               "build the model flat, with each layer called once")
            if len(layer._inbound_nodes) > 1:
                raise LRPError(f"layer {layer.name!r} ({type(layer).__name__}) is called "
                               f"{len(layer._inbound_nodes)} times: LRP needs each layer called once")
            if not checks.is_input_layer(layer):
                producers[id(layer.output)] = layer
        self.start_layer = self._find_start(producers)
        self.nodes = self._collect(producers)
        self.num_outputs = int(self.start_layer.units)
        self.nonnegative = self._nonnegative_inputs()
        self.rules = self._assign_rules(composite)

    def _find_start(self, producers: dict[int, keras.layers.Layer]) -> keras.layers.Layer:
        layer = producers.get(id(self.model.outputs[0]))
        self.output_layers: list[keras.layers.Layer] = []
        while layer is not None and checks.is_output_activation(layer) and not checks.is_linear_layer(layer):
            self.output_layers.insert(0, layer)
            inputs = _tensor_ids(layer.input)
            layer = producers.get(inputs[0]) if len(inputs) == 1 else None
        if layer is None or not checks.is_dense_layer(layer):
            raise LRPError(f"cannot find where to start LRP in {self.model.name}: the output must come from a Dense "
                           "layer, optionally followed by softmax/sigmoid/linear activation layers")
        return layer

    def _collect(self, producers: dict[int, keras.layers.Layer]) -> list[_Node]:
        # Only the layers upstream of the start take part, in forward (topological) order.
        needed, stack = set(), [self.start_layer]
        while stack:
            layer = stack.pop()
            if layer.name in needed:
                continue
            needed.add(layer.name)
            stack.extend(producers[t] for t in _tensor_ids(layer.input) if t in producers)
        nodes, unsupported = [], []
        for layer in self.model.layers:
            if layer.name not in needed or checks.is_input_layer(layer):
                continue
            kind = _classify(layer, layer is self.start_layer)
            if kind is None:
                activation = checks.activation_name(layer)
                detail = f" with activation {activation!r}" if activation not in (None, "linear") else ""
                unsupported.append(f"{layer.name!r} ({type(layer).__name__}{detail})")
                continue
            nodes.append(_Node(layer, kind, _tensor_ids(layer.input), id(layer.output)))
        if unsupported:
            raise LRPError(
                f"{self.model.name} has layers without an LRP rule: {', '.join(unsupported)}; supported are Conv2D and "
                "Dense (linear or ReLU), ReLU, MaxPooling2D, Flatten, Reshape, Dropout, Add, CaffeLRN, CaffePreprocess"
            )
        return nodes

    def _nonnegative_inputs(self) -> dict[str, bool]:
        nonneg = {self.input_id: False}
        first_inputs = {}
        for node in self.nodes:
            inputs_nonneg = all(nonneg.get(t, False) for t in node.inputs)
            first_inputs[node.layer.name] = inputs_nonneg
            if checks.is_nonnegative_output(node.layer):
                nonneg[node.output] = True
            elif node.kind == "linear" or isinstance(node.layer, CaffePreprocess):
                nonneg[node.output] = False
            else:
                nonneg[node.output] = inputs_nonneg
        return first_inputs

    def _assign_rules(self, composite: Composite) -> dict[str, Rule]:
        rules, first = {}, True
        producers = {node.output: node for node in self.nodes}
        for node in self.nodes:
            if node.kind != "linear":
                continue
            rule = composite.rule_for(node.layer, first)
            first = False
            if rule is None:
                raise LRPError(f"composite {composite.name!r} gives no rule for layer {node.layer.name!r} "
                               f"({type(node.layer).__name__})")
            if isinstance(rule, ZBox) and rule.low is None:
                source = producers.get(node.inputs[0])
                if source is None or not isinstance(source.layer, CaffePreprocess):
                    raise LRPError(f"ZBox on layer {node.layer.name!r} has no bounds and its input is not Caffe-"
                                   "preprocessed: give ZBox(low, high) in the layer's input space")
                mean = source.layer.bgr_mean
                rule = rule.with_bounds([-m for m in mean], [255.0 - m for m in mean])
            rules[node.layer.name] = rule
        unknown = set(composite.by_name) - {n.layer.name for n in self.nodes}
        if unknown:
            raise LRPError(f"rules given for layers not in {self.model.name}: {', '.join(sorted(unknown))}")
        return rules

    def _op(self, layer: keras.layers.Layer) -> LinearOp:
        bias = layer.bias.value if layer.use_bias else None
        return LinearOp(_linear_apply(layer), layer.kernel.value, bias, self.nonnegative[layer.name])

    def forward(self, images: tf.Tensor) -> tuple[dict[int, tf.Tensor], dict[str, tf.Tensor]]:
        """Run the model up to the start layer; return every tensor by id and every linear pre-activation."""
        values = {self.input_id: images}
        pre_activations = {}
        for node in self.nodes:
            inputs = [values[t] for t in node.inputs]
            if node.kind == "linear":
                z = self._op(node.layer).forward(inputs[0])
                pre_activations[node.layer.name] = z
                values[node.output] = tf.nn.relu(z) if checks.activation_name(node.layer) == "relu" else z
            else:
                values[node.output] = node.layer(inputs if len(inputs) > 1 else inputs[0], training=False)
        return values, pre_activations

    def scores(self, images: tf.Tensor) -> tf.Tensor:
        """The start layer's pre-activations `(N, outputs)`: logits or regression scores."""
        return self.forward(images)[1][self.start_layer.name]

    def outputs(self, z_start: tf.Tensor) -> tf.Tensor:
        """The model's own outputs from the start layer's pre-activations: its softmax or score layers applied."""
        out = z_start
        for layer in self.output_layers:
            out = layer(out, training=False)
        return out

    def explain(self, images: tf.Tensor, targets: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """One forward pass: all pre-activations `(N, outputs)`, the explained indices (-1: each image's top output)
        and their relevance at the input pixels."""
        values, pre_activations = self.forward(images)
        z_start = pre_activations[self.start_layer.name]
        targets = tf.where(targets < 0, tf.argmax(z_start, axis=1, output_type=tf.int32), targets)
        return z_start, targets, self._backward(values, pre_activations, targets)

    def relevance(self, images: tf.Tensor, targets: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Scores of `targets` `(N,)` and their relevance at the input pixels (the input's shape)."""
        z_start, targets, relevance = self.explain(images, targets)
        return tf.gather(z_start, targets, batch_dims=1), relevance

    def _backward(self, values: dict[int, tf.Tensor], pre_activations: dict[str, tf.Tensor], targets: tf.Tensor
                  ) -> tf.Tensor:
        images = values[self.input_id]
        z_start = pre_activations[self.start_layer.name]
        onehot = tf.one_hot(targets, self.num_outputs, dtype=z_start.dtype)
        relevance = {self.start_layer.name: onehot * z_start}
        incoming: dict[int, tf.Tensor] = {}
        for node in reversed(self.nodes):
            layer = node.layer
            if layer is self.start_layer:
                r_out = relevance[layer.name]
            elif node.output in incoming:
                r_out = incoming.pop(node.output)
            else:
                continue  # nothing upstream of the start depends on this layer's output
            inputs = [values[t] for t in node.inputs]
            if node.kind == "linear":
                r_in = [self.rules[layer.name](self._op(layer), inputs[0], pre_activations[layer.name], r_out)]
            elif node.kind == "elementwise":
                r_in = [r_out]
            elif node.kind == "maxpool":
                r_in = [max_pool_relevance(layer, inputs[0], r_out)]
            elif node.kind == "gradient":
                with tf.GradientTape() as tape:
                    tape.watch(inputs[0])
                    out = layer(inputs[0], training=False)
                r_in = [tape.gradient(out, inputs[0], output_gradients=r_out)]
            else:  # add: each summand's share of the sum
                s = r_out / stabilize(values[node.output], DEFAULT_STABILIZER)
                r_in = [a * s for a in inputs]
            for tensor_id, r in zip(node.inputs, r_in):
                incoming[tensor_id] = incoming[tensor_id] + r if tensor_id in incoming else r
        return incoming.get(self.input_id, tf.zeros_like(images))

    def input_gradient(self, images: tf.Tensor, targets: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """All pre-activations, the explained indices (-1: top output) and their gradient at the input pixels."""
        with tf.GradientTape() as tape:
            tape.watch(images)
            z_start = self.scores(images)
            targets = tf.where(targets < 0, tf.argmax(z_start, axis=1, output_type=tf.int32), targets)
            scores = tf.gather(z_start, targets, batch_dims=1)
        return z_start, targets, tape.gradient(scores, images)
