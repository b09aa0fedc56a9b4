"""The relevance graph: a forward pass that keeps every activation, then a reverse walk applying each layer's rule.

The graph is read from the model's own config (the functional layout Keras saves: every layer's inbound
tensors by layer name), so nested functional models (a backbone inside a regressor) are walked layer by
layer as if the model were flat, and no private Keras attribute is read. Every layer gets its treatment from
the composite: linear layers a rule, the others a treatment from its layer map, a registered adapter or the
default layer map.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from psyattr.lrp import checks
from psyattr.lrp.adapters import adapter_for
from psyattr.lrp.composites import Composite
from psyattr.lrp.rules import LinearOp, Rule, Treatment, ZBox
from psyattr.lrp.strided import space_to_depth_conv

PIXEL_RANGE = (0.0, 255.0)


class LRPError(ValueError):
    """A model or request the relevance graph cannot handle."""


@dataclasses.dataclass
class _Node:
    layer: keras.layers.Layer
    inputs: list[str]
    output: str
    rule: Rule | Treatment | None = None


def _histories(value: Any) -> Iterator[tuple[str, int, int]]:
    """Every (layer name, node index, tensor index) a serialised call argument refers to."""
    if isinstance(value, dict):
        history = value.get("config", {}).get("keras_history") if value.get("class_name") == "__keras_tensor__" else None
        if history is not None:
            yield str(history[0]), int(history[1]), int(history[2])
            return
        for item in value.values():
            yield from _histories(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _histories(item)


def _endpoints(spec: Any) -> list[tuple[str, int, int]]:
    # `input_layers` / `output_layers` are [name, node, tensor] or a list of them.
    if spec and isinstance(spec[0], str):
        return [(str(spec[0]), int(spec[1]), int(spec[2]))]
    return [(str(s[0]), int(s[1]), int(s[2])) for s in spec]


def _key(prefix: str, name: str, tensor: int = 0) -> str:
    return f"{prefix}{name}:{tensor}"


def flatten_model(model: keras.Model, prefix: str = "") -> tuple[list[_Node], list[str], list[str]]:
    """The model's layers in forward order with the tensors they connect (nested models expanded); its input and
    output tensor keys."""
    config = model.get_config()
    if isinstance(model, keras.Sequential) or "input_layers" not in config:
        return _flatten_sequential(model, prefix)
    nodes: list[_Node] = []
    alias: dict[str, str] = {}
    resolve = lambda key: alias.get(key, key)  # noqa: E731
    for entry in config["layers"]:
        name = entry["name"]
        layer = model.get_layer(name)
        inbound = entry.get("inbound_nodes", [])
        if checks.is_input_layer(layer):
            continue
        if len(inbound) != 1:
            raise LRPError(f"layer {name!r} ({type(layer).__name__}) is called {len(inbound)} times in {model.name}: "
                           "LRP needs each layer called once")
        inputs = [resolve(_key(prefix, n, t)) for n, _, t in _histories(inbound[0])]
        if isinstance(layer, keras.Model):
            inner, inner_inputs, inner_outputs = flatten_model(layer, f"{prefix}{name}/")
            if len(inner_inputs) != len(inputs) or len(inner_outputs) != 1:
                raise LRPError(f"nested model {name!r} must take {len(inputs)} input(s) and give one output")
            for inner_key, outer_key in zip(inner_inputs, inputs):
                alias[inner_key] = outer_key
            for node in inner:
                node.inputs = [alias.get(k, k) for k in node.inputs]
            nodes.extend(inner)
            alias[_key(prefix, name)] = alias.get(inner_outputs[0], inner_outputs[0])
            continue
        nodes.append(_Node(layer, inputs, _key(prefix, name)))
    inputs = [_key(prefix, n, t) for n, _, t in _endpoints(config["input_layers"])]
    outputs = [resolve(_key(prefix, n, t)) for n, _, t in _endpoints(config["output_layers"])]
    return nodes, inputs, outputs


def _flatten_sequential(model: keras.Model, prefix: str) -> tuple[list[_Node], list[str], list[str]]:
    input_key = _key(prefix, "input")
    nodes: list[_Node] = []
    current = input_key
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            inner, inner_inputs, inner_outputs = flatten_model(layer, f"{prefix}{layer.name}/")
            for node in inner:
                node.inputs = [current if k == inner_inputs[0] else k for k in node.inputs]
            nodes.extend(inner)
            current = inner_outputs[0]
            continue
        key = _key(prefix, layer.name)
        nodes.append(_Node(layer, [current], key))
        current = key
    return nodes, [input_key], [current]


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


def _transposable_apply(layer: keras.layers.Layer) -> Callable | None:
    """The same linear map in a form whose input gradient is cheaper, where there is one (strided 2-D convolutions)."""
    if not isinstance(layer, keras.layers.Conv2D):
        return None
    strides = tuple(layer.strides)
    if len(set(strides)) != 1 or strides[0] == 1 or tuple(layer.dilation_rate) != (1, 1) or layer.groups != 1:
        return None

    def apply(a, kernel, bias):
        out = space_to_depth_conv(a, kernel, strides[0], layer.padding)
        return out if bias is None else out + bias
    return apply


def _describe(layer: keras.layers.Layer) -> str:
    activation = checks.activation_name(layer)
    detail = f" with activation {activation!r}" if activation not in (None, "linear") else ""
    return f"{layer.name!r} ({type(layer).__name__}{detail})"


class RelevanceGraph:
    """LRP over a Keras model (functional or Sequential, nested models too); every layer treated as the composite says.

    `input_bounds` is the pixel range of the model's input, from which z^B derives its bounds when it is given
    none (through the layers between the input and the first linear layer, which need adapters that map bounds).
    """

    def __init__(self, model: keras.Model, composite: Composite, input_bounds: tuple[float, float] = PIXEL_RANGE):
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise LRPError(f"LRP needs a model with one input and one output, {model.name} has "
                           f"{len(model.inputs)} and {len(model.outputs)}")
        self.model = model
        nodes, inputs, outputs = flatten_model(model)
        self.input_id, output = inputs[0], outputs[0]
        producers = {node.output: node for node in nodes}
        self.start_layer, self.output_layers = self._find_start(producers, output)
        self.nodes = self._upstream(nodes, producers)
        self.num_outputs = int(self.start_layer.units)
        self.nonnegative = self._nonnegative_inputs()
        self._assign_rules(composite, input_bounds)

    def _find_start(self, producers: dict[str, _Node], output: str) -> tuple[keras.layers.Layer, list]:
        node, after = producers.get(output), []
        while node is not None and checks.is_output_activation(node.layer) and not checks.is_linear_layer(node.layer):
            after.insert(0, node.layer)
            node = producers.get(node.inputs[0]) if len(node.inputs) == 1 else None
        if node is None or not checks.is_dense_layer(node.layer):
            raise LRPError(f"cannot find where to start LRP in {self.model.name}: the output must come from a Dense "
                           "layer, optionally followed by softmax/sigmoid/linear activation layers")
        return node.layer, after

    def _upstream(self, nodes: list[_Node], producers: dict[str, _Node]) -> list[_Node]:
        # Only the layers upstream of the start take part, in forward (topological) order.
        start = next(n for n in nodes if n.layer is self.start_layer)
        needed, stack = set(), [start]
        while stack:
            node = stack.pop()
            if node.output in needed:
                continue
            needed.add(node.output)
            stack.extend(producers[t] for t in node.inputs if t in producers)
        return [node for node in nodes if node.output in needed]

    def _nonnegative_inputs(self) -> dict[str, bool]:
        nonneg = {self.input_id: False}
        first_inputs = {}
        for node in self.nodes:
            inputs_nonneg = all(nonneg.get(t, False) for t in node.inputs)
            first_inputs[node.output] = inputs_nonneg
            adapter = adapter_for(node.layer)
            if checks.is_nonnegative_output(node.layer):
                nonneg[node.output] = True
            elif checks.is_linear_layer(node.layer):
                nonneg[node.output] = False
            else:
                preserving = adapter.sign_preserving if adapter else isinstance(node.layer, checks.SIGN_PRESERVING)
                nonneg[node.output] = inputs_nonneg and preserving
        return first_inputs

    def _assign_rules(self, composite: Composite, input_bounds: tuple[float, float]) -> None:
        first, unsupported = True, []
        for node in self.nodes:
            layer = node.layer
            is_linear = checks.is_linear_layer(layer)
            if is_linear and (getattr(layer, "data_format", "channels_last") != "channels_last" or (
                    layer is not self.start_layer and checks.activation_name(layer) not in checks.PASS_ACTIVATIONS)):
                unsupported.append(_describe(layer))
                continue
            rule = composite.rule_for(layer, first and is_linear)
            first = first and not is_linear
            if rule is None or (is_linear and not isinstance(rule, Rule)):
                unsupported.append(_describe(layer))
                continue
            if isinstance(rule, ZBox) and rule.low is None:
                rule = rule.with_bounds(*self._bounds_at(node, input_bounds))
            node.rule = rule
        if unsupported:
            raise LRPError(
                f"{self.model.name} has layers without an LRP rule: {', '.join(unsupported)} (composite "
                f"{composite.name!r}); rules exist for Conv2D and Dense (linear or ReLU), and treatments for ReLU, "
                "dropout, MaxPooling2D, Add, Flatten, Reshape, padding and cropping, and for the layer types with a "
                "registered adapter (psyattr.lrp.adapters)")
        names = {node.layer.name for node in self.nodes}
        unknown = set(composite.by_name) - names
        if unknown:
            raise LRPError(f"rules given for layers not in {self.model.name}: {', '.join(sorted(unknown))}")

    def _bounds_at(self, target: _Node, input_bounds: tuple[float, float]) -> tuple[list[float], list[float]]:
        """The pixel bounds in the space `target` sees, carried from the input through the adapters' bound maps."""
        low, high = np.asarray([input_bounds[0]], np.float64), np.asarray([input_bounds[1]], np.float64)
        producers = {node.output: node for node in self.nodes}
        chain, key = [], target.inputs[0]
        while key != self.input_id:
            node = producers.get(key)
            if node is None or len(node.inputs) != 1:
                break
            chain.insert(0, node)
            key = node.inputs[0]
        for node in chain:
            adapter = adapter_for(node.layer)
            if adapter is not None and adapter.bounds is not None:
                low, high = (np.asarray(b, np.float64) for b in adapter.bounds(node.layer, low, high))
            elif not isinstance(node.layer, checks.ELEMENTWISE_PASS):
                raise LRPError(f"ZBox on layer {target.layer.name!r}: cannot carry the pixel bounds through "
                               f"{_describe(node.layer)}; give ZBox(low, high) in the layer's input space")
        return low.tolist(), high.tolist()

    def _op(self, node: _Node) -> LinearOp:
        layer = node.layer
        bias = layer.bias.value if layer.use_bias else None
        return LinearOp(_linear_apply(layer), layer.kernel.value, bias, self.nonnegative[node.output],
                        _transposable_apply(layer))

    def forward(self, images: tf.Tensor) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
        """Run the model up to the start layer; return every tensor by key and every linear pre-activation."""
        values = {self.input_id: images}
        pre_activations = {}
        for node in self.nodes:
            inputs = [values[t] for t in node.inputs]
            if checks.is_linear_layer(node.layer):
                z = self._op(node).forward(inputs[0])
                pre_activations[node.output] = z
                values[node.output] = tf.nn.relu(z) if checks.activation_name(node.layer) == "relu" else z
            else:
                values[node.output] = node.layer(inputs if len(inputs) > 1 else inputs[0], training=False)
        return values, pre_activations

    @property
    def _start_key(self) -> str:
        return next(node.output for node in self.nodes if node.layer is self.start_layer)

    def scores(self, images: tf.Tensor) -> tf.Tensor:
        """The start layer's pre-activations `(N, outputs)`: logits or regression scores."""
        return self.forward(images)[1][self._start_key]

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
        z_start = pre_activations[self._start_key]
        targets = tf.where(targets < 0, tf.argmax(z_start, axis=1, output_type=tf.int32), targets)
        return z_start, targets, self._backward(values, pre_activations, targets)

    def relevance(self, images: tf.Tensor, targets: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Scores of `targets` `(N,)` and their relevance at the input pixels (the input's shape)."""
        z_start, targets, relevance = self.explain(images, targets)
        return tf.gather(z_start, targets, batch_dims=1), relevance

    def _backward(self, values: dict[str, tf.Tensor], pre_activations: dict[str, tf.Tensor], targets: tf.Tensor
                  ) -> tf.Tensor:
        start_key = self._start_key
        z_start = pre_activations[start_key]
        onehot = tf.one_hot(targets, self.num_outputs, dtype=z_start.dtype)
        incoming: dict[str, tf.Tensor] = {start_key: onehot * z_start}
        for node in reversed(self.nodes):
            if node.output not in incoming:
                continue  # nothing upstream of the start depends on this layer's output
            r_out = incoming.pop(node.output)
            inputs = [values[t] for t in node.inputs]
            if checks.is_linear_layer(node.layer):
                r_in = [node.rule(self._op(node), inputs[0], pre_activations[node.output], r_out)]
            else:
                r_in = node.rule(node.layer, inputs, values[node.output], r_out)
            for key, r in zip(node.inputs, r_in):
                incoming[key] = incoming[key] + r if key in incoming else r
        return incoming.get(self.input_id, tf.zeros_like(values[self.input_id]))

    def input_gradient(self, images: tf.Tensor, targets: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """All pre-activations, the explained indices (-1: top output) and their gradient at the input pixels."""
        with tf.GradientTape() as tape:
            tape.watch(images)
            z_start = self.scores(images)
            targets = tf.where(targets < 0, tf.argmax(z_start, axis=1, output_type=tf.int32), targets)
            scores = tf.gather(z_start, targets, batch_dims=1)
        return z_start, targets, tape.gradient(scores, images)

    @property
    def rules(self) -> dict[str, Rule | Treatment]:
        """Each layer's rule or treatment, by layer name."""
        return {node.layer.name: node.rule for node in self.nodes}


def layer_rules(model: keras.Model, composite: Composite) -> Sequence[tuple[str, str]]:
    """(layer name, rule or treatment) for every layer LRP walks: what a composite does with a model."""
    return [(name, repr(rule)) for name, rule in RelevanceGraph(model, composite).rules.items()]
