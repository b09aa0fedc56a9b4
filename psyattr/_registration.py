"""psyattr's Keras objects get registered as soon as Keras is loaded, without `import psyattr` loading Keras.

`.keras` files of psyattr models name its custom layers; Keras finds them only once they are registered.
Importing psyattr must stay light (no TensorFlow), so instead of importing the layers it waits for Keras:
if Keras is loaded already, the layers are registered now; otherwise a finder on `sys.meta_path` lets
Keras load as usual and registers the layers right after.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

_MODULES = ("psyattr.models.layers", "psyattr.models.metrics", "psyattr.models.optimizers")


def _register() -> None:
    for name in _MODULES:
        importlib.import_module(name)


class _Loader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        _register()


class _AfterKeras(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        sys.meta_path.remove(self)  # the real finders locate Keras; this one only wraps its loader
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def register_when_keras_loads() -> None:
    """Register psyattr's Keras objects now if Keras is loaded, else right after it loads."""
    if "keras" in sys.modules:
        _register()
    elif not any(isinstance(finder, _AfterKeras) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterKeras())
