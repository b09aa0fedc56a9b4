"""numpy arrays to and from `TensorProto`, written as TF Serving writes them (typed fields, not raw bytes)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

# dtype -> (DataType, the typed field TF Serving's AsProtoField fills)
_FIELDS = {
    np.dtype(np.float32): (types_pb2.DT_FLOAT, "float_val"),
    np.dtype(np.float64): (types_pb2.DT_DOUBLE, "double_val"),
    np.dtype(np.int32): (types_pb2.DT_INT32, "int_val"),
    np.dtype(np.int64): (types_pb2.DT_INT64, "int64_val"),
    np.dtype(np.bool_): (types_pb2.DT_BOOL, "bool_val"),
}
_NUMPY = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64, types_pb2.DT_INT32: np.int32,
          types_pb2.DT_INT64: np.int64, types_pb2.DT_BOOL: np.bool_}


def dtype_name(dtype: int) -> str:
    """`DT_FLOAT` for the enum value of DT_FLOAT."""
    return types_pb2.DataType.Name(dtype)


def to_proto(array: np.ndarray, proto: tensor_pb2.TensorProto | None = None) -> tensor_pb2.TensorProto:
    """A response tensor in typed fields (`float_val`, `string_val`, ...), like TF Serving's Predict.

    `proto` is an empty message to fill in place (e.g. `response.outputs[key]`): copying a filled one in costs
    as much again.
    """
    array = np.asarray(array)
    proto = tensor_pb2.TensorProto() if proto is None else proto
    proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in array.shape)
    if array.dtype == object or array.dtype.kind in "SU":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(x if isinstance(x, bytes) else str(x).encode() for x in array.ravel())
        return proto
    if array.dtype not in _FIELDS:
        raise TypeError(f"no TensorProto field for dtype {array.dtype}")
    proto.dtype, field = _FIELDS[array.dtype]
    if field in _PACKED and array.size:
        # The same typed field, parsed from its packed wire form: the little-endian values as they lie in
        # memory, which costs a copy, where extending the field takes a Python float per value (20x slower).
        payload = np.ascontiguousarray(array, dtype=_PACKED[field][1]).tobytes()
        proto.MergeFromString(_PACKED[field][0] + _varint(len(payload)) + payload)
        return proto
    # tolist() first: extending a repeated field from a list is several times faster than from numpy.
    getattr(proto, field).extend(array.ravel().tolist())
    return proto


# TensorProto's float_val (field 5) and double_val (field 6) as packed fields (wire type 2): tag and dtype.
_PACKED = {"float_val": (bytes([5 << 3 | 2]), "<f4"), "double_val": (bytes([6 << 3 | 2]), "<f8")}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def to_numpy(proto: tensor_pb2.TensorProto, writable: bool = True) -> np.ndarray:
    """A numpy array from either encoding (typed fields or `tensor_content`); ValueError if inconsistent.

    `writable=False` lets `tensor_content` be read in place (no copy) for arrays nobody writes to.
    """
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    count = int(np.prod(shape)) if shape else 1
    dtype = _NUMPY.get(proto.dtype)
    if dtype is not None and not proto.tensor_content:
        values = np.array(getattr(proto, _FIELDS[np.dtype(dtype)][1]), dtype=dtype)
        if values.size == count:
            return values.reshape(shape)
        if values.size == 1:  # TensorFlow broadcasts a single typed value to the whole shape
            return np.full(shape, values[0], dtype=dtype)
        raise ValueError(f"{values.size} values for shape {shape}")
    if proto.dtype == types_pb2.DT_STRING:
        values = np.array(list(proto.string_val), dtype=object)
        if values.size != count:
            raise ValueError(f"{values.size} strings for shape {shape}")
        return values.reshape(shape)
    if not writable and dtype is not None and len(proto.tensor_content) == count * np.dtype(dtype).itemsize:
        return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape)
    return tf.make_ndarray(proto)
