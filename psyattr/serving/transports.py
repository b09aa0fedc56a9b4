"""How `ExplainerClient` reaches a server: TF Serving's gRPC API, or its REST API for `http://` addresses.

Both take the same calls (predict a signature on named numpy inputs, metadata, status) and raise
ServingError with the server's gRPC code and message; the client adds retries and hints. Over REST the
code comes from the `X-Grpc-Code` header that `psyattr serve` sends, else from the HTTP status.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import grpc
import numpy as np
import orjson
import urllib3
from google.protobuf import json_format
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from psyattr.serving.errors import CODE_HEADER, ServingError, clip, code_for_http
from psyattr.serving.tensors import to_numpy

_EXACT_FLOAT32_INT = 2 ** 24  # whole numbers up to this are exact in float32, and shorter in JSON as integers


@dataclass(frozen=True)
class Target:
    """Which model and version a call asks for."""

    name: str
    version: int | None = None
    label: str | None = None

    def fill(self, spec, signature: str | None = None) -> None:
        """Write this target into a ModelSpec."""
        spec.name = self.name
        if signature is not None:
            spec.signature_name = signature
        if self.version is not None:
            spec.version.value = self.version
        elif self.label is not None:
            spec.version_label = self.label


# Batches of images and heatmaps are megabytes: HTTP/2 windows and frames sized for them, instead of gRPC's
# 64 KiB start that BDP probing grows slowly, cut a batch-16 explain's loopback round trip by about a sixth.
LARGE_MESSAGE_OPTIONS = [("grpc.http2.lookahead_bytes", 16 << 20), ("grpc.http2.max_frame_size", (16 << 20) - 1)]


class GrpcTransport:
    """TF Serving's gRPC API on `host:port`."""

    def __init__(self, address: str, timeout: float, max_message_bytes: int):
        self.timeout = timeout
        self.channel = grpc.insecure_channel(address, options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            *LARGE_MESSAGE_OPTIONS,
        ])
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as err:
            raise ServingError(err.code(), err.details() or "") from None

    def predict(self, target: Target, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output of `signature` on `inputs`, by alias."""
        import tensorflow as tf

        request = predict_pb2.PredictRequest()
        target.fill(request.model_spec, signature)
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        response = self._call(self.prediction.Predict, request)
        return {key: to_numpy(proto) for key, proto in response.outputs.items()}

    def metadata(self, target: Target) -> dict[str, meta_graph_pb2.SignatureDef]:
        """The SignatureDefs by name."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        target.fill(request.model_spec)
        response = self._call(self.prediction.GetModelMetadata, request)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        return dict(signatures.signature_def)

    def status(self, target: Target) -> list[tuple[int, str]]:
        """(version, state name) for every version the server knows of."""
        request = get_model_status_pb2.GetModelStatusRequest()
        target.fill(request.model_spec)
        response = self._call(self.models.GetModelStatus, request)
        state = get_model_status_pb2.ModelVersionStatus.State
        return [(s.version, state.Name(s.state)) for s in response.model_version_status]

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()


def _json_text(value):
    if not isinstance(value, bytes):
        return str(value)
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode()}


def json_value(value: np.ndarray):
    """An input array as the REST client sends it: nested lists; whole floats as integers, text as strings."""
    array = np.asarray(value)
    if array.dtype == object or array.dtype.kind in "SU":
        return np.array([_json_text(v) for v in array.ravel()], dtype=object).reshape(array.shape).tolist()
    if _whole_floats(array):
        return array.astype(np.int64).tolist()
    return array.tolist()


def _whole_floats(array: np.ndarray) -> bool:
    """Floats that are all whole numbers exact in float32 (NaN and infinity are not), which JSON writes as integers."""
    return array.dtype.kind == "f" and np.array_equal(array, np.rint(array)) and \
        (array.size == 0 or np.abs(array).max() < _EXACT_FLOAT32_INT)


def _wire_value(array: np.ndarray):
    """`json_value` in the form orjson writes straight from numpy: whole floats as int64, other floats as float64."""
    if array.dtype == object or array.dtype.kind in "SU":
        return json_value(array)
    if array.dtype.kind == "f":
        # float64 holds each float32 exactly, so its shortest digits read back as the same float32.
        return np.ascontiguousarray(array, dtype=np.int64 if _whole_floats(array) else np.float64)
    return np.ascontiguousarray(array)


def request_body(signature: str, inputs: dict[str, np.ndarray]) -> bytes:
    """The JSON body of a columnar predict request (orjson writes 16 faces 17x faster than json from lists)."""
    arrays = {key: np.asarray(value) for key, value in inputs.items()}
    if any(a.dtype.kind == "f" and not np.isfinite(a).all() for a in arrays.values()):
        # orjson writes NaN as null; json writes the NaN literal that the server names in its refusal.
        return json.dumps({"signature_name": signature, "inputs": {k: json_value(a) for k, a in arrays.items()}},
                          separators=(",", ":")).encode()
    return orjson.dumps({"signature_name": signature, "inputs": {k: _wire_value(a) for k, a in arrays.items()}},
                        option=orjson.OPT_SERIALIZE_NUMPY)


def read_json(data: bytes):
    """A JSON document, read by orjson; by json where orjson refuses it (NaN and Infinity, which TF Serving writes)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def _output_array(value) -> np.ndarray:
    array = np.array(value)
    if array.dtype.kind == "U":
        return np.array([s.encode("utf-8") for s in array.ravel()], dtype=object).reshape(array.shape)
    if array.dtype.kind == "f":
        return array.astype(np.float32)  # TF Serving writes float32 in the digits that read back exactly
    if array.dtype == object:  # {"b64": ...} values of *_bytes outputs
        flat = [base64.b64decode(v["b64"]) if isinstance(v, dict) else v for v in np.ravel(array)]
        return np.array(flat, dtype=object).reshape(array.shape)
    return array


class RestTransport:
    """TF Serving's REST API at `http://host:port`, over one thread-safe urllib3 connection pool."""

    def __init__(self, url: str, timeout: float, max_connections: int = 8):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise ValueError(f"expected a REST address like http://127.0.0.1:8501, got {url!r}")
        self.timeout = timeout
        self.pool = urllib3.connection_from_url(f"{parts.scheme}://{parts.netloc}", maxsize=max_connections,
                                                block=False, retries=False)

    def _path(self, target: Target) -> str:
        path = f"/v1/models/{quote(target.name, safe='')}"
        if target.version is not None:
            return f"{path}/versions/{target.version}"
        return f"{path}/labels/{quote(target.label, safe='')}" if target.label is not None else path

    def _call(self, method: str, path: str, body: bytes | None = None) -> dict:
        try:
            response = self.pool.request(method, path, body=body, timeout=urllib3.Timeout(total=self.timeout),
                                         headers={"Content-Type": "application/json"} if body is not None else None)
        except urllib3.exceptions.NewConnectionError as err:  # a subclass of the timeout error, so first
            raise ServingError(grpc.StatusCode.UNAVAILABLE, clip(str(err), 200)) from None
        except urllib3.exceptions.TimeoutError:
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        except urllib3.exceptions.HTTPError as err:  # reset or closed: what gRPC calls UNAVAILABLE
            raise ServingError(grpc.StatusCode.UNAVAILABLE, clip(str(err), 200)) from None
        try:
            document = read_json(response.data)
        except ValueError:
            document = None
        if response.status == 200 and isinstance(document, dict):
            return document
        named = response.headers.get(CODE_HEADER, "")
        code = grpc.StatusCode[named] if named in grpc.StatusCode.__members__ else code_for_http(response.status)
        if code == grpc.StatusCode.OK:
            code = grpc.StatusCode.INTERNAL
        message = document.get("error") if isinstance(document, dict) else None
        raise ServingError(code, message or f"HTTP {response.status}: {clip(response.data.decode('utf-8', 'replace'))}")

    def predict(self, target: Target, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output of `signature` on `inputs`, by alias (a columnar request: one array per input)."""
        outputs = self._call("POST", f"{self._path(target)}:predict", request_body(signature, inputs))["outputs"]
        if not isinstance(outputs, dict):  # TF Serving drops the name of a signature's only output
            (name,) = self.metadata(target)[signature].outputs
            outputs = {name: outputs}
        return {key: _output_array(value) for key, value in outputs.items()}

    def metadata(self, target: Target) -> dict[str, meta_graph_pb2.SignatureDef]:
        """The SignatureDefs by name."""
        document = self._call("GET", f"{self._path(target)}/metadata")
        signatures = json_format.ParseDict(document["metadata"]["signature_def"],
                                           get_model_metadata_pb2.SignatureDefMap(), ignore_unknown_fields=True)
        return dict(signatures.signature_def)

    def status(self, target: Target) -> list[tuple[int, str]]:
        """(version, state name) for every version the server knows of."""
        document = self._call("GET", self._path(target))
        return [(int(s["version"]), s["state"]) for s in document["model_version_status"]]

    def close(self) -> None:
        """Close the pooled connections."""
        self.pool.close()
