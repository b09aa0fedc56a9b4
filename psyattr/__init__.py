"""psyattr: predict how people judge a face, and explain each prediction with a relevance heatmap.

`import psyattr` is light: TensorFlow is imported when a model is first built or loaded. The names below
are loaded on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

_LAZY = {
    "build_base_model": "psyattr.models.levi_hassner",
    "load_model": "psyattr.models.loading",
    "LRPExplainer": "psyattr.lrp.explainer",
    "Explanation": "psyattr.explanation",
    "ExplainerClient": "psyattr.serving.client",
    "Framing": "psyattr.faces.framing",
    "get_framing": "psyattr.faces.framing",
    "Run": "psyattr.runs",
}


from psyattr._registration import register_when_keras_loads  # noqa: E402

register_when_keras_loads()


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'psyattr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["__version__", *_LAZY]
