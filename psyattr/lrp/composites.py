"""Composites: which rule goes on which layer. Ordered (predicate, rule) pairs, first match wins.

Presets are registered under snake_case names that match zennit's classes (`EpsilonGammaBox` is
`epsilon_gamma_box`). Rules assigned by layer name take precedence over the predicates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import keras

from psyattr.lrp import checks
from psyattr.lrp.adapters import adapter_for
from psyattr.lrp.checks import is_conv_layer, is_dense_layer, is_linear_layer
from psyattr.lrp.rules import (DEFAULT_STABILIZER, AlphaBeta, Epsilon, Flat, Gamma, GradientFlow, Identity, Norm, Rule,
                               Treatment, WinnerTakesAll, ZBox, ZPlus)

LayerPredicate = Callable[[keras.layers.Layer, bool], bool]
"""A predicate takes the layer and whether it is the model's first linear layer."""


def first_layer(layer: keras.layers.Layer, is_first: bool) -> bool:
    """The first Conv2D or Dense layer seen from the input."""
    return is_first and is_linear_layer(layer)


def conv(layer: keras.layers.Layer, is_first: bool) -> bool:
    """Any 2-D convolution."""
    return is_conv_layer(layer)


def dense(layer: keras.layers.Layer, is_first: bool) -> bool:
    """Any fully connected layer."""
    return is_dense_layer(layer)


def linear(layer: keras.layers.Layer, is_first: bool) -> bool:
    """Any layer that takes a rule."""
    return is_linear_layer(layer)


LayerTest = Callable[[keras.layers.Layer], bool]

# What every composite does with layers that carry no weights (zennit's layer map), unless it says otherwise.
DEFAULT_LAYER_MAP: tuple[tuple[LayerTest, Treatment], ...] = (
    (checks.is_elementwise_pass, Identity()),
    (checks.is_max_pool, WinnerTakesAll()),
    (checks.is_sum, Norm()),
    (checks.is_gradient_pass, GradientFlow()),
)


class Composite:
    """Assigns every layer its treatment: by layer name first; a linear layer the first matching rule; any other layer
    the composite's layer map, then its type's registered adapter, then the default layer map."""

    def __init__(self, rules: Sequence[tuple[LayerPredicate, Rule]], by_name: Mapping[str, Rule | Treatment] | None = None,
                 name: str = "custom", layer_map: Sequence[tuple[LayerTest, Treatment]] = ()):
        for predicate, rule in rules:
            if not callable(predicate) or not isinstance(rule, Rule):
                raise TypeError(f"composite entries must be (predicate, Rule) pairs, got ({predicate!r}, {rule!r})")
        for layer_name, rule in (by_name or {}).items():
            if not isinstance(rule, (Rule, Treatment)):
                raise TypeError(f"rule for layer {layer_name!r} must be a Rule or a Treatment, got {rule!r}")
        for test, treatment in layer_map:
            if not callable(test) or not isinstance(treatment, Treatment):
                raise TypeError(f"layer map entries must be (test, Treatment) pairs, got ({test!r}, {treatment!r})")
        self.rules = list(rules)
        self.by_name = dict(by_name or {})
        self.name = name
        self.layer_map = list(layer_map)

    def rule_for(self, layer: keras.layers.Layer, is_first: bool) -> Rule | Treatment | None:
        """The rule (linear layers) or treatment (other layers) for `layer`, or None when nothing matches."""
        if layer.name in self.by_name:
            return self.by_name[layer.name]
        if is_linear_layer(layer):
            return next((rule for predicate, rule in self.rules if predicate(layer, is_first)), None)
        for test, treatment in self.layer_map:
            if test(layer):
                return treatment
        adapter = adapter_for(layer)
        if adapter is not None:
            return adapter.treatment
        return next((treatment for test, treatment in DEFAULT_LAYER_MAP if test(layer)), None)

    def with_layer_rules(self, by_name: Mapping[str, Rule | Treatment]) -> Composite:
        """A copy of this composite with extra rules for named layers."""
        return Composite(self.rules, {**self.by_name, **by_name}, self.name, self.layer_map)

    def __repr__(self) -> str:
        return f"Composite({self.name!r}, by_name={sorted(self.by_name)})"


COMPOSITES: dict[str, Callable[..., Composite]] = {}


def register_composite(name: str) -> Callable[[Callable[..., Composite]], Callable[..., Composite]]:
    """Register a composite factory under a snake_case `name`."""
    def decorate(factory: Callable[..., Composite]) -> Callable[..., Composite]:
        COMPOSITES[name] = factory
        return factory
    return decorate


def get_composite(composite: str | Composite, **kwargs) -> Composite:
    """A registered composite by name (factory options as keyword arguments), or `composite` itself."""
    if isinstance(composite, Composite):
        if kwargs:
            raise TypeError("options apply to composites given by name only")
        return composite
    if composite not in COMPOSITES:
        raise ValueError(f"unknown composite {composite!r}: expected one of {', '.join(sorted(COMPOSITES))}")
    composite_obj = COMPOSITES[composite](**kwargs)
    composite_obj.name = composite
    return composite_obj


@register_composite("epsilon")
def epsilon_composite(epsilon: float = DEFAULT_STABILIZER) -> Composite:
    """LRP-epsilon on every layer."""
    return Composite([(linear, Epsilon(epsilon))])


@register_composite("alpha2beta1")
def alpha2beta1_composite(stabilizer: float = DEFAULT_STABILIZER) -> Composite:
    """The paper's setting: alpha 2, beta 1 on every conv and dense layer."""
    return Composite([(linear, AlphaBeta(2.0, 1.0, stabilizer))])


@register_composite("alpha1beta0")
def alpha1beta0_composite(stabilizer: float = DEFAULT_STABILIZER) -> Composite:
    """alpha 1, beta 0 (z+) on every layer."""
    return Composite([(linear, ZPlus(stabilizer))])


@register_composite("epsilon_plus")
def epsilon_plus_composite(epsilon: float = DEFAULT_STABILIZER) -> Composite:
    """z+ on conv layers, epsilon on dense layers."""
    return Composite([(conv, ZPlus()), (dense, Epsilon(epsilon))])


@register_composite("epsilon_alpha2beta1")
def epsilon_alpha2beta1_composite(epsilon: float = DEFAULT_STABILIZER) -> Composite:
    """alpha 2, beta 1 on conv layers, epsilon on dense layers."""
    return Composite([(conv, AlphaBeta(2.0, 1.0)), (dense, Epsilon(epsilon))])


@register_composite("epsilon_plus_flat")
def epsilon_plus_flat_composite(epsilon: float = DEFAULT_STABILIZER) -> Composite:
    """flat on the first layer, z+ on the other conv layers, epsilon on dense layers."""
    return Composite([(first_layer, Flat()), (conv, ZPlus()), (dense, Epsilon(epsilon))])


@register_composite("epsilon_alpha2beta1_flat")
def epsilon_alpha2beta1_flat_composite(epsilon: float = DEFAULT_STABILIZER) -> Composite:
    """flat on the first layer, alpha 2 beta 1 on the other conv layers, epsilon on dense layers."""
    return Composite([(first_layer, Flat()), (conv, AlphaBeta(2.0, 1.0)), (dense, Epsilon(epsilon))])


@register_composite("epsilon_gamma_box")
def epsilon_gamma_box_composite(epsilon: float = DEFAULT_STABILIZER, gamma: float = 0.25,
                                low: float | Sequence[float] | None = None,
                                high: float | Sequence[float] | None = None) -> Composite:
    """z^B on the first layer (bounds from the pixel range and the preprocessing unless given), gamma on conv,
    epsilon on dense."""
    return Composite([(first_layer, ZBox(low, high)), (conv, Gamma(gamma)), (dense, Epsilon(epsilon))])
