"""Layer-wise Relevance Propagation: rules, composites, the relevance graph, the explainer and heatmaps."""

from psyattr.lrp.composites import COMPOSITES, Composite, get_composite, register_composite
from psyattr.lrp.explainer import GRADIENT_METHODS, Explanation, LRPExplainer
from psyattr.lrp.graph import LRPError, RelevanceGraph
from psyattr.lrp.rules import AlphaBeta, Epsilon, Flat, Gamma, Pass, Rule, WSquare, ZBox, ZPlus

__all__ = [
    "COMPOSITES", "GRADIENT_METHODS", "AlphaBeta", "Composite", "Epsilon", "Explanation", "Flat", "Gamma",
    "LRPError", "LRPExplainer", "Pass", "RelevanceGraph", "Rule", "WSquare", "ZBox", "ZPlus", "get_composite",
    "register_composite",
]
