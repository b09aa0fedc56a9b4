"""The embedded model server: TF Serving's gRPC API (`PredictionService`, `ModelService`) and REST API over
SavedModel folders.

A client written for `tensorflow_model_server` works against it unchanged: the same services, request
and response messages, status codes and messages. It is meant for one machine and for tests; production
runs the `tensorflow/serving` image on the same folders (serving/README.md).

Message sizes: requests up to `max_message_bytes` (64 MiB by default: about 100 images as float32);
larger ones get RESOURCE_EXHAUSTED from gRPC before they reach the server. Responses up to 512 MiB.
Clients must raise their own receive limit (4 MiB by default in gRPC) for heatmaps:
`psyattr.serving.ExplainerClient` does.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
from collections import Counter

import grpc
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from psyattr.serving.config import BatchingParameters
from psyattr.serving.errors import ServingError, clip, invalid
from psyattr.serving.manager import ModelManager
from psyattr.serving.rest import DEFAULT_MAX_BODY_BYTES, DEFAULT_REST_TIMEOUT, RestServer
from psyattr.serving.tensors import to_proto
from psyattr.serving.transports import LARGE_MESSAGE_OPTIONS
from psyattr.serving.validation import output_aliases, validate_request

log = logging.getLogger(__name__)

DEFAULT_PORT = 8500  # TF Serving's gRPC port
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
MAX_SEND_BYTES = 512 << 20
SIGNATURE_DEF = "signature_def"


class ServingCore:
    """The request handling behind the gRPC services and the REST API: lookup, validation, batching, responses."""

    def __init__(self, manager: ModelManager):
        self.manager = manager
        self.status_counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def count(self, code: grpc.StatusCode) -> None:
        """Record the status of one answered request."""
        with self._lock:
            self.status_counts[code.name] += 1

    def predict(self, request: predict_pb2.PredictRequest, timeout: float | None) -> predict_pb2.PredictResponse:
        """Answer a Predict request (or raise ServingError)."""
        if not request.HasField("model_spec"):
            raise invalid("Missing ModelSpec")
        servable = self.manager.servable(request.model_spec)
        signature_name = request.model_spec.signature_name or "serving_default"
        signature = servable.signature(signature_name)
        feeds, size = validate_request(signature, request, servable.output_names, self.manager.batching.max_batch_size)
        aliases = output_aliases(signature, request)
        future = self.manager.batcher(servable, signature_name).submit(feeds, size)
        try:
            outputs = future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "the request's deadline passed while it waited "
                               "for its batch: give the call a longer timeout") from None
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature_name
        for alias in aliases:
            to_proto(outputs[alias], response.outputs[alias])
        return response

    def signature_inputs(self, spec: model_pb2.ModelSpec, signature_name: str) -> dict[str, meta_graph_pb2.TensorInfo]:
        """The inputs a REST body is read against: TF Serving's REST lookup, with its message for a wrong name."""
        servable = self.manager.servable(spec)
        name = signature_name or "serving_default"
        if name not in servable.signatures:
            raise invalid(f'Serving signature name: "{clip(name)}" not found in signature def')
        return dict(servable.signatures[name].inputs)

    def metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest
                 ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """Answer GetModelMetadata: the version's SignatureDefs."""
        if not request.HasField("model_spec"):
            raise invalid("Missing ModelSpec")
        if not request.metadata_field:
            raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for name in request.metadata_field:
            if name != SIGNATURE_DEF:
                raise invalid(f"Metadata field {clip(name)} is not supported")
        servable = self.manager.servable(request.model_spec)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in servable.signatures.items():
            signatures.signature_def[name].CopyFrom(signature)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.metadata[SIGNATURE_DEF].Pack(signatures)
        return response

    def model_status(self, request: get_model_status_pb2.GetModelStatusRequest
                     ) -> get_model_status_pb2.GetModelStatusResponse:
        """Answer GetModelStatus: every known version's state."""
        if not request.HasField("model_spec"):
            raise invalid("Missing ModelSpec")
        response = get_model_status_pb2.GetModelStatusResponse()
        for version, state in self.manager.status(request.model_spec):
            entry = response.model_version_status.add(version=version, state=state.state)
            entry.status.error_code = state.code.value[0]
            entry.status.error_message = state.message
        return response


def _handle(core: ServingCore, answer, request, context: grpc.ServicerContext):
    try:
        response = answer(request, context)
    except ServingError as err:
        core.count(err.code)
        context.abort(err.code, err.message)
    except Exception as err:  # a bug must cost one request, never the server
        log.exception("request failed")
        core.count(grpc.StatusCode.INTERNAL)
        context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(err).__name__}: {err}")
    core.count(grpc.StatusCode.OK)
    return response


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: ServingCore):
        self.core = core

    def Predict(self, request, context):  # noqa: N802 (gRPC method names)
        return _handle(self.core, lambda r, c: self.core.predict(r, c.time_remaining()), request, context)

    def GetModelMetadata(self, request, context):  # noqa: N802
        return _handle(self.core, lambda r, c: self.core.metadata(r), request, context)


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, core: ServingCore):
        self.core = core

    def GetModelStatus(self, request, context):  # noqa: N802
        return _handle(self.core, lambda r, c: self.core.model_status(r), request, context)


class ModelServer:
    """Serve the SavedModels under `models_dir` over TF Serving's gRPC API, e.g. `ModelServer("saved_models").start()`.

    `config` is a TF Serving model config file (names, base paths, version policies, labels); without it
    every folder of `models_dir` is a model serving its latest version. `port=0` picks a free port.
    `rest_port` (8501 in `psyattr serve`; None here) adds TF Serving's REST API on the same host, over
    the same lookup, validation and batching; `rest_max_body_bytes` caps its request bodies.
    `xla_cpu_compilation_enabled=False`, like TF Serving's default, refuses the signatures that need XLA
    (INTERNAL, "XLA compilation disabled", as TF Serving answers); other Python code in the process keeps XLA.
    """

    def __init__(self, models_dir: str | os.PathLike, config: str | os.PathLike | None = None,
                 batching: BatchingParameters | None = None, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 poll_seconds: float = 1.0, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 xla_cpu_compilation_enabled: bool = False, max_workers: int = 32, warmup: bool = True,
                 rest_port: int | None = None, rest_max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 rest_timeout: float = DEFAULT_REST_TIMEOUT):
        self.manager = ModelManager(models_dir, config, batching, poll_seconds, warmup, xla_cpu_compilation_enabled)
        self.core = ServingCore(self.manager)
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.xla_cpu_compilation_enabled = xla_cpu_compilation_enabled
        self.max_workers = max_workers
        self.rest_port = rest_port
        self.rest_max_body_bytes = rest_max_body_bytes
        self.rest_timeout = rest_timeout
        self._server: grpc.Server | None = None
        self._rest: RestServer | None = None

    @property
    def address(self) -> str:
        """`host:port` to give gRPC clients."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def rest_address(self) -> str | None:
        """`http://host:port` of the REST API, or None without one."""
        return self._rest.address if self._rest is not None else None

    def start(self) -> ModelServer:
        """Load the models, bind the port and start answering; returns self."""
        self.manager.start()
        options = [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", MAX_SEND_BYTES),
            ("grpc.so_reuseport", 0),  # a port in use must fail here, not be shared silently
            *LARGE_MESSAGE_OPTIONS,
        ]
        server = grpc.server(concurrent.futures.ThreadPoolExecutor(self.max_workers, thread_name_prefix="grpc"),
                             options=options, maximum_concurrent_rpcs=self.max_workers * 4)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_PredictionService(self.core), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(self.core), server)
        try:
            bound = server.add_insecure_port(self.address)
        except RuntimeError:
            bound = 0
        if not bound:
            self.manager.stop()
            raise OSError(f"cannot listen on {self.address}: the port is in use or the host is not this machine's "
                          "(pick another --port, or --port 0 for a free one)")
        self.port = bound
        server.start()
        if self.rest_port is not None:
            try:
                self._rest = RestServer(self.core, self.host, self.rest_port, self.rest_max_body_bytes,
                                        self.rest_timeout, self.max_workers).start()
            except OSError:
                server.stop(0).wait()
                self.manager.stop()
                raise
            self.rest_port = self._rest.port
        self._server = server
        log.info("serving %s on %s%s", ", ".join(self.models()) or "no models yet", self.address,
                 f" and {self.rest_address}" if self._rest else "")
        return self

    def models(self) -> list[str]:
        """The names of the configured models."""
        return self.manager.model_names()

    def stop(self, grace: float = 30.0) -> None:
        """Stop taking requests, let running ones finish (up to `grace` seconds), then unload everything."""
        stopped = self._server.stop(grace) if self._server is not None else None  # returns at once
        if self._rest is not None:
            self._rest.stop(grace)
            self._rest = None
        if stopped is not None:
            stopped.wait()
            self._server = None
        self.manager.stop()
        log.info("stopped serving on %s", self.address)

    def wait(self) -> None:
        """Block until the server stops."""
        if self._server is not None:
            self._server.wait_for_termination()

    def __enter__(self) -> ModelServer:
        return self.start() if self._server is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
