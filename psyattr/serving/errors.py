"""Errors that become gRPC statuses and HTTP answers, with TensorFlow's status codes mapped to gRPC's (the same numbers)."""

from __future__ import annotations

import grpc

from psyattr.models.outputs import SHOWN
from psyattr.models.outputs import clip as clip  # re-exported: the serving modules quote input with it

_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}
_C = grpc.StatusCode
# TF Serving's ToHTTPStatusCode (model_servers/http_server.cc).
_HTTP_STATUS = {
    _C.OK: 200, _C.CANCELLED: 499, _C.UNKNOWN: 500, _C.INVALID_ARGUMENT: 400, _C.DEADLINE_EXCEEDED: 504,
    _C.NOT_FOUND: 404, _C.ALREADY_EXISTS: 409, _C.PERMISSION_DENIED: 403, _C.RESOURCE_EXHAUSTED: 429,
    _C.FAILED_PRECONDITION: 400, _C.ABORTED: 409, _C.OUT_OF_RANGE: 400, _C.UNIMPLEMENTED: 501, _C.INTERNAL: 500,
    _C.UNAVAILABLE: 503, _C.DATA_LOSS: 500, _C.UNAUTHENTICATED: 401,
}
# The other way, for answers that do not say their code: the most common code behind each HTTP status.
_BY_HTTP_STATUS = {
    400: _C.INVALID_ARGUMENT, 401: _C.UNAUTHENTICATED, 403: _C.PERMISSION_DENIED, 404: _C.NOT_FOUND, 409: _C.ABORTED,
    413: _C.RESOURCE_EXHAUSTED, 429: _C.RESOURCE_EXHAUSTED, 499: _C.CANCELLED, 500: _C.INTERNAL, 501: _C.UNIMPLEMENTED,
    503: _C.UNAVAILABLE, 504: _C.DEADLINE_EXCEEDED,
}
# psyattr serve names the gRPC code of every REST answer in this header (TF Serving does not).
CODE_HEADER = "X-Grpc-Code"
PREVIEW_CHARS = SHOWN


class ServingError(Exception):
    """A request the server answers with a gRPC status `code` and a message naming the problem."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


def status_code(value: int) -> grpc.StatusCode:
    """The gRPC status code for TensorFlow's (or absl's) numeric code; UNKNOWN for anything else."""
    return _BY_VALUE.get(int(value), grpc.StatusCode.UNKNOWN)


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status TF Serving's REST API answers for a gRPC code."""
    return _HTTP_STATUS.get(code, 500)


def code_for_http(status: int) -> grpc.StatusCode:
    """The gRPC code behind an HTTP status, for REST answers that do not name theirs (UNKNOWN if unmapped)."""
    if 200 <= status < 300:
        return _C.OK
    return _BY_HTTP_STATUS.get(status, _C.UNKNOWN)


def invalid(message: str) -> ServingError:
    """An INVALID_ARGUMENT error."""
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    """A NOT_FOUND error."""
    return ServingError(grpc.StatusCode.NOT_FOUND, message)
