"""Errors that become gRPC statuses, with TensorFlow's status codes mapped to gRPC's (they are the same numbers)."""

from __future__ import annotations

import grpc

_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


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


def invalid(message: str) -> ServingError:
    """An INVALID_ARGUMENT error."""
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    """A NOT_FOUND error."""
    return ServingError(grpc.StatusCode.NOT_FOUND, message)
