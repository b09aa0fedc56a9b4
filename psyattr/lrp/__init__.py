"""Layer-wise Relevance Propagation: rules, composites, adapters, the relevance graph, the explainer and heatmaps."""

from psyattr.lrp.adapters import LayerAdapter, adapter_for, register_adapter
from psyattr.lrp.composites import COMPOSITES, DEFAULT_LAYER_MAP, Composite, get_composite, register_composite
from psyattr.lrp.explainer import GRADIENT_METHODS, Explanation, LRPExplainer
from psyattr.lrp.graph import LRPError, RelevanceGraph
from psyattr.lrp.rules import (AlphaBeta, Epsilon, Flat, Gamma, GradientFlow, Identity, Norm, Pass, Rule, Treatment,
                               WinnerTakesAll, WSquare, ZBox, ZPlus)

__all__ = [
    "COMPOSITES", "DEFAULT_LAYER_MAP", "GRADIENT_METHODS", "AlphaBeta", "Composite", "Epsilon", "Explanation", "Flat",
    "Gamma", "GradientFlow", "Identity", "LRPError", "LRPExplainer", "LayerAdapter", "Norm", "Pass", "RelevanceGraph",
    "Rule", "Treatment", "WSquare", "WinnerTakesAll", "ZBox", "ZPlus", "adapter_for", "get_composite",
    "register_adapter", "register_composite",
]
