"""psyattr: predict how people judge a face, and explain each prediction with a relevance heatmap."""

__version__ = "0.1.0"


def _register_keras_objects() -> None:
    # Importing the layer modules registers psyattr's custom Keras objects, so that `.keras` files
    # written by psyattr load in any process that has imported psyattr.
    from psyattr.models import layers, metrics  # noqa: F401


_register_keras_objects()

from psyattr.models.levi_hassner import build_base_model  # noqa: E402

__all__ = ["__version__", "build_base_model"]
