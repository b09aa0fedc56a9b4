"""Serving: the TF-Serving-compatible gRPC and REST server for exported models, and its client."""

from psyattr.serving.client import ExplainerClient
from psyattr.serving.config import BatchingParameters, read_batching_parameters, read_model_config
from psyattr.serving.errors import ServingError
from psyattr.serving.rest import DEFAULT_REST_PORT
from psyattr.serving.server import DEFAULT_PORT, ModelServer

__all__ = [
    "DEFAULT_PORT", "DEFAULT_REST_PORT", "BatchingParameters", "ExplainerClient", "ModelServer",
    "ServingError", "read_batching_parameters", "read_model_config",
]
