"""One loaded model version: a SavedModel in its own graph Session, loaded as TF Serving loads it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import prediction_log_pb2

from psyattr.export import ASSETS_EXTRA, WARMUP_FILE, read_export_metadata
from psyattr.serving.errors import ServingError, clip, status_code

log = logging.getLogger(__name__)

MAX_WARMUP_RECORDS = 1000  # TF Serving's limit


def error_summary(err: BaseException) -> str:
    """TensorFlow's message without its boilerplate lines ("Graph execution error:", node names)."""
    text = getattr(err, "message", None) or str(err)
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.strip().startswith(("[[", "Graph execution error", "Detected at node",
                                                               "Node:"))]
    return "; ".join(lines) or type(err).__name__


class LoadError(RuntimeError):
    """A version folder that does not load (corrupt, half copied, or not a SavedModel)."""


# TF Serving's answer (TensorFlow's words) when a function that must compile meets XLA switched off, and the way out.
XLA_DISABLED = ("XLA compilation disabled (the server was started without XLA: psyattr serve "
                "--xla-cpu-compilation-enabled, like TF Serving's --xla_cpu_compilation_enabled=true, allows it)")


def _must_compile(attrs) -> bool:
    return "_XlaMustCompile" in attrs and attrs["_XlaMustCompile"].b


def xla_signatures(meta_graph: meta_graph_pb2.MetaGraphDef) -> set[str]:
    """The signatures that run a function traced with `jit_compile=True` (XLA), read from the graph itself."""
    functions = {f.signature.name: f for f in meta_graph.graph_def.library.function}
    compiles: dict[str, bool] = {}

    def calls_xla(nodes, seen: set[str]) -> bool:
        for node in nodes:
            if _must_compile(node.attr):
                return True
            for value in node.attr.values():
                names = [value.func.name] if value.HasField("func") else [f.name for f in value.list.func]
                if any(function_compiles(name, seen) for name in names if name):
                    return True
        return False

    def function_compiles(name: str, seen: set[str]) -> bool:
        if name not in compiles:
            function = functions.get(name)
            if function is None or name in seen:
                return False
            compiles[name] = _must_compile(function.attr) or calls_xla(function.node_def, seen | {name})
        return compiles[name]

    producers = {node.name: node for node in meta_graph.graph_def.node}
    found = set()
    for key, signature in meta_graph.signature_def.items():
        stack, reached = [info.name.split(":")[0] for info in signature.outputs.values()], {}
        while stack:
            name = stack.pop()
            node = producers.get(name)
            if node is None or name in reached:
                continue
            reached[name] = node
            stack.extend(i.lstrip("^").split(":")[0] for i in node.input)
        if calls_xla(reached.values(), set()):
            found.add(key)
    return found


class Servable:
    """A SavedModel version in a `tf.compat.v1` Session: the C++ `LoadSavedModel` path of TF Serving."""

    def __init__(self, name: str, version: int, path: str | os.PathLike, xla_enabled: bool = True):
        self.name = name
        self.version = int(version)
        self.path = Path(path)
        self.xla_enabled = xla_enabled
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        try:
            with self.graph.as_default():
                self.meta_graph: meta_graph_pb2.MetaGraphDef = tf.compat.v1.saved_model.loader.load(
                    self.session, ["serve"], str(self.path))
            self.metadata = read_export_metadata(self.path) or {}
            # Kept per servable rather than switched off process-wide: TF Serving calls a C++ function for that,
            # which Python reaches only by its mangled symbol.
            self.xla_signatures = xla_signatures(self.meta_graph)
        except Exception as err:  # the loader raises many kinds for damaged folders
            self.session.close()
            raise LoadError(f"cannot load {self.path}: {error_summary(err)}") from err

    @property
    def signatures(self) -> dict[str, meta_graph_pb2.SignatureDef]:
        """The SignatureDefs by name."""
        return dict(self.meta_graph.signature_def)

    @property
    def output_names(self) -> list[str]:
        """The model's output names in order (psyattr exports only; empty otherwise)."""
        return list(self.metadata.get("outputs", []))

    def signature(self, name: str) -> meta_graph_pb2.SignatureDef:
        """The SignatureDef called `name`, or TF Serving's FAILED_PRECONDITION error."""
        if name not in self.meta_graph.signature_def:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{clip(name)}" not found.')
        return self.meta_graph.signature_def[name]

    def run(self, signature: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one signature on validated inputs (by alias); every output by alias."""
        sig = self.signature(signature)
        if not self.xla_enabled and signature in self.xla_signatures:
            raise ServingError(grpc.StatusCode.INTERNAL, XLA_DISABLED)
        fetches = {alias: info.name for alias, info in sig.outputs.items()}
        try:
            return self.session.run(fetches, {sig.inputs[alias].name: value for alias, value in feeds.items()})
        except tf.errors.OpError as err:
            raise ServingError(status_code(err.error_code), error_summary(err)) from err

    def warmup(self, validate) -> int:
        """Replay `assets.extra/tf_serving_warmup_requests` (Predict records) as TF Serving does; return the count.

        `validate(signature_def, request)` turns a request into feeds, as for live requests.
        """
        path = self.path / ASSETS_EXTRA / WARMUP_FILE
        if not path.exists():
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(str(path)):
            if count >= MAX_WARMUP_RECORDS:
                raise LoadError(f"{path} holds more than {MAX_WARMUP_RECORDS} warmup records")
            entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if entry.WhichOneof("log_type") != "predict_log":
                raise LoadError(f"{path}: only Predict warmup records are supported, got {entry.WhichOneof('log_type')}")
            request = entry.predict_log.request
            signature = request.model_spec.signature_name or "serving_default"
            try:
                feeds, _ = validate(self.signature(signature), request, self.output_names)
                self.run(signature, feeds)
            except ServingError as err:
                raise LoadError(f"warmup request {count + 1} ({signature}) of {self.path} failed: {err}") from err
            count += 1
        return count

    def close(self) -> None:
        """Release the Session."""
        self.session.close()
