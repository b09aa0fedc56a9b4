"""Exit 0 when every named model has an AVAILABLE version on a TF Serving gRPC endpoint, else 1.

`psyattr serve` has no grpc.health.v1 service (what a Kubernetes `grpc` probe calls), so its readiness
probe runs this: `python model_status_probe.py --address 127.0.0.1:8500 MODEL [MODEL ...]`. It also works
against tensorflow_model_server. The reasons for a failure go to stderr, which `kubectl describe pod` shows.

The two messages are encoded by hand: the generated classes in tensorflow_serving.apis import all of
TensorFlow, seconds and hundreds of MB on every probe, where grpc alone starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import sys

import grpc

METHOD = "/tensorflow.serving.ModelService/GetModelStatus"
AVAILABLE = 30  # tensorflow.serving.ModelVersionStatus.State
VARINT, I64, LEN, I32 = 0, 1, 2, 5  # protobuf wire types


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | LEN) + _varint(len(payload)) + payload


def encode_request(model: str) -> bytes:
    """GetModelStatusRequest { model_spec { name: model } }: the latest-version form, every version's state."""
    return _length_delimited(1, _length_delimited(1, model.encode()))


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def _fields(data: bytes):
    """(field number, value) pairs of one message: ints for varints, bytes otherwise."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        kind = key & 7
        if kind == VARINT:
            value, pos = _read_varint(data, pos)
        elif kind == LEN:
            size, pos = _read_varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
        elif kind in (I64, I32):
            size = 8 if kind == I64 else 4
            value, pos = data[pos:pos + size], pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {kind}")
        yield key >> 3, value


def version_states(response: bytes) -> dict[int, int]:
    """GetModelStatusResponse's model_version_status as {version: state}."""
    states = {}
    for field, entry in _fields(response):
        if field == 1:  # model_version_status
            values = dict(_fields(entry))
            states[values.get(1, 0)] = values.get(2, 0)  # version, state (absent when 0)
    return states


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", metavar="MODEL")
    parser.add_argument("--address", default="127.0.0.1:8500", help="host:port of the gRPC API")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per call")
    args = parser.parse_args(argv)
    problems = []
    with grpc.insecure_channel(args.address) as channel:
        call = channel.unary_unary(METHOD)  # no serializers: bytes in, bytes out
        for model in args.models:
            try:
                states = version_states(call(encode_request(model), timeout=args.timeout))
            except grpc.RpcError as err:
                problems.append(f"{model}: {err.code().name}: {err.details()}")
                continue
            if AVAILABLE not in states.values():
                problems.append(f"{model}: no version is AVAILABLE (versions and states: {states})")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
