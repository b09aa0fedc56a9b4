"""TF Serving's REST JSON: predict bodies to `PredictRequest`s, and responses, statuses and metadata to JSON.

Follows TF Serving's `util/json_tensor.cc`: the row format (`"instances"`: one value, or one object of
named inputs, per example) and the columnar format (`"inputs"`: a value, or an object of named inputs);
values typed by the signature's input dtypes (numbers for DT_FLOAT and the integer types, strings or
`{"b64": "..."}` for DT_STRING); the `NaN`, `Infinity` and `-Infinity` tokens; and its error messages,
except that user input is echoed as a short prefix only. Predictions answer row requests with
`{"predictions": ...}` (a list of objects when there are several outputs) and columnar ones with
`{"outputs": ...}`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable, Iterator, Mapping

import grpc
import numpy as np
from google.protobuf import json_format
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2

from psyattr.serving.errors import PREVIEW_CHARS, ServingError, clip, invalid
from psyattr.serving.tensors import to_numpy

ROW, COLUMNAR = "row", "columnar"
B64 = "b64"
BYTES_SUFFIX = "_bytes"  # DT_STRING outputs named like this go back as {"b64": ...}, as in TF Serving
SIGNATURE_DEF = "signature_def"
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# TensorFlow's DataTypeString, which TF Serving's messages use.
_DTYPE_TEXT = {types_pb2.DT_FLOAT: "float", types_pb2.DT_DOUBLE: "double", types_pb2.DT_INT32: "int32",
               types_pb2.DT_INT16: "int16", types_pb2.DT_INT8: "int8", types_pb2.DT_UINT8: "uint8",
               types_pb2.DT_INT64: "int64", types_pb2.DT_BOOL: "bool", types_pb2.DT_STRING: "string",
               types_pb2.DT_UINT32: "uint32", types_pb2.DT_UINT64: "uint64"}
_NUMPY = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64, types_pb2.DT_INT32: np.int32,
          types_pb2.DT_INT16: np.int16, types_pb2.DT_INT8: np.int8, types_pb2.DT_UINT8: np.uint8,
          types_pb2.DT_INT64: np.int64, types_pb2.DT_BOOL: np.bool_, types_pb2.DT_UINT32: np.uint32,
          types_pb2.DT_UINT64: np.uint64}
_INT_RANGES = {types_pb2.DT_INT32: (-2 ** 31, 2 ** 31 - 1), types_pb2.DT_INT16: (-2 ** 31, 2 ** 31 - 1),
               types_pb2.DT_INT8: (-2 ** 31, 2 ** 31 - 1), types_pb2.DT_UINT8: (-2 ** 31, 2 ** 31 - 1),
               types_pb2.DT_INT64: (-2 ** 63, 2 ** 63 - 1), types_pb2.DT_UINT32: (0, 2 ** 32 - 1),
               types_pb2.DT_UINT64: (0, 2 ** 64 - 1)}
_FLOATS = (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE)

InputsOf = Callable[[str], Mapping[str, meta_graph_pb2.TensorInfo]]


# ---- echoing user input ----------------------------------------------------------------------------

def _tokens(value, depth: int = 0) -> Iterator[str]:
    if depth > PREVIEW_CHARS:
        yield "..."
    elif isinstance(value, dict):
        yield "{"
        for i, (key, item) in enumerate(value.items()):
            yield ", " if i else ""
            yield json.dumps(str(key)[:PREVIEW_CHARS + 2]) + ": "
            yield from _tokens(item, depth + 1)
        yield "}"
    elif isinstance(value, list):
        yield "["
        for i, item in enumerate(value):
            yield ", " if i else ""
            yield from _tokens(item, depth + 1)
        yield "]"
    elif isinstance(value, str):
        yield json.dumps(value[:PREVIEW_CHARS + 2])
    elif isinstance(value, float) and not math.isfinite(value):
        yield "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    else:
        yield json.dumps(value)


def preview(value) -> str:
    """A JSON value as TF Serving's messages quote it, cut after a short prefix (never the whole of a big body)."""
    text = ""
    for token in _tokens(value):
        text += token
        if len(text) > PREVIEW_CHARS:
            return text[:PREVIEW_CHARS] + "..."
    return text


def _json_type(value) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    return "String" if isinstance(value, str) else "Number"


def _dtype_text(dtype: int) -> str:
    return _DTYPE_TEXT.get(dtype, types_pb2.DataType.Name(dtype).removeprefix("DT_").lower())


# ---- JSON values to tensors, exactly as TF Serving checks them ----------------------------------

def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(B64), str)


def _b64_decode(value) -> bytes:
    if not _is_b64(value):
        raise invalid(f"JSON Value: {preview(value)} not formatted correctly for base64 data")
    text = "".join(value[B64].split())
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"Unable to base64 decode: {preview(value)}") from None


def _type_error(value, dtype: int) -> ServingError:
    return invalid(f"JSON Value: {preview(value)} Type: {_json_type(value)} is not of expected type: "
                   f"{_dtype_text(dtype)}")


def _scalar(value, dtype: int):
    """One JSON scalar as a value of `dtype` (AddValueToTensor)."""
    if dtype == types_pb2.DT_STRING:
        if isinstance(value, dict):
            return _b64_decode(value)
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return value.encode("utf-8", errors="surrogatepass")
    if isinstance(value, dict):
        raise _type_error(value, dtype)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if dtype in _FLOATS:
        if not number:
            raise _type_error(value, dtype)
        digits = 24 if dtype == types_pb2.DT_FLOAT else 53
        lossy = (abs(value) > 2 ** digits - 1 if isinstance(value, int) else
                 dtype == types_pb2.DT_FLOAT and math.isfinite(value) and abs(value) > _FLOAT32_MAX)
        if lossy:
            raise invalid(f"Cannot convert JSON value: {preview(value)} to {_dtype_text(dtype)} without loss of "
                          "precision.")
        return value
    if dtype == types_pb2.DT_BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    if dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        if not (number and isinstance(value, int) and low <= value <= high):
            raise _type_error(value, dtype)
        return value
    raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"Conversion of JSON Value: {preview(value)} to type: {_dtype_text(dtype)}")


def _dense_shape(value) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value, level: int, shape: list[int], dtype: int, out: list) -> None:
    """FillTensorProto: every leaf at depth len(shape), every list as long as the first at its level."""
    if not isinstance(value, list):
        if level != len(shape):
            raise invalid(f"JSON Value: {preview(value)} found at incorrect level: {level + 1} in the JSON DOM. "
                          f"Expected at level: {len(shape)}")
        out.append(_scalar(value, dtype))
        return
    if level >= len(shape):
        raise invalid(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
    if len(value) != shape[level]:
        raise invalid(f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: "
                      f"{shape[level]}")
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def _exact(value, dtype: int) -> tuple[list[int], list]:
    """A JSON value's dense shape and its values in order, with TF Serving's checks and messages."""
    shape, values = _dense_shape(value), []
    try:
        _fill(value, 0, shape, dtype, values)
    except RecursionError:
        raise invalid("JSON value nested too deeply") from None
    return shape, values


def _array(shape: list[int], values: list, dtype: int) -> np.ndarray:
    if dtype == types_pb2.DT_STRING:
        return np.array(values, dtype=object).reshape(shape)
    return np.array(values, dtype=_NUMPY[dtype]).reshape(shape)


def _fast_floats(value, dtype: int, has_bools: bool) -> np.ndarray | None:
    """Nested lists of numbers straight through numpy, or None where only the exact walk can say what is wrong.

    numpy turns booleans into numbers without a trace, so a body with `true` or `false` anywhere takes the
    exact walk; strings, nulls, objects and ragged lists make numpy fail or give a non-numeric array.
    """
    if dtype not in _FLOATS or has_bools:
        return None
    try:
        array = np.array(value)
    except (ValueError, TypeError, OverflowError, RecursionError):
        return None
    if array.dtype.kind == "i":
        if array.size and np.abs(array).max() > 2 ** (24 if dtype == types_pb2.DT_FLOAT else 53) - 1:
            return None
    elif array.dtype.kind == "f":
        if dtype == types_pb2.DT_FLOAT and array.size and (np.abs(array[np.isfinite(array)]) > _FLOAT32_MAX).any():
            return None
    else:
        return None
    return array.astype(_NUMPY[dtype])


def _tensor(value, dtype: int, has_bools: bool) -> np.ndarray:
    fast = _fast_floats(value, dtype, has_bools)
    if fast is not None:
        return fast
    return _array(*_exact(value, dtype), dtype)


def _proto(array: np.ndarray, dtype: int) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype)
    proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in array.shape)
    if dtype == types_pb2.DT_STRING:
        proto.string_val.extend(array.ravel().tolist())
    else:
        proto.tensor_content = np.ascontiguousarray(array).tobytes()
    return proto


# ---- predict request bodies --------------------------------------------------------------------

def _parse(body: bytes):
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    try:
        doc = json.loads(body)
    except UnicodeDecodeError:
        raise invalid("JSON Parse error: Invalid encoding in string (the body must be UTF-8)") from None
    except json.JSONDecodeError as err:
        raise invalid(f"JSON Parse error: {err.msg} at offset: {err.pos}") from None
    except RecursionError:
        raise invalid("JSON Parse error: the document is nested too deeply") from None
    if not isinstance(doc, dict):
        raise invalid(f"JSON Value: {preview(doc)} Is not object")
    return doc


def _element_error(index: int, key: str | None, err: ServingError) -> ServingError:
    where = f"{index} key: {key}" if key is not None else f"{index}"
    return invalid(f"Failed to process element: {where} of 'instances' list. Error: {err.code.name}: {err.message}")


def _rows_exact(instances: list, infos: Mapping, objects: bool) -> dict[str, np.ndarray]:
    """FillTensorMapFromInstancesList, element by element: the first error in TF Serving's order."""
    names = sorted(infos)
    shapes: dict[str, list[int]] = {}
    columns: dict[str, list] = {name: [] for name in names}
    for index, element in enumerate(instances):
        if objects and not (isinstance(element, dict) and not _is_b64(element)):
            raise invalid(f"Expecting object but got list at item {index} of input list")
        if not objects and isinstance(element, dict) and not _is_b64(element):
            raise invalid(f"Expecting value/list but got object at item {index} of input list")
        items = element.items() if objects else [(names[0], element)]
        for key, item in items:
            label = key if objects else None
            if key not in infos:
                raise _element_error(index, label, invalid(f"JSON object: does not have named input: {clip(key)}"))
            try:
                shape, values = _exact(item, infos[key].dtype)
            except ServingError as err:
                raise _element_error(index, label, err) from None
            if key not in shapes:
                shapes[key] = shape
            elif math.prod(shapes[key]) != len(values):
                raise _element_error(index, label, invalid(
                    f"Expecting tensor size: {math.prod(shapes[key])} but got: {len(values)}"))
            elif shapes[key] != shape:
                raise _element_error(index, label, invalid(
                    f"Expecting shape [{','.join(map(str, shapes[key]))}] but got: [{','.join(map(str, shape))}]"))
            columns[key].append(values)
        if objects and set(element) != set(names):
            raise invalid(f"Failed to process element: {index} of 'instances' list. JSON object: {preview(element)} "
                          f"must only have keys: {','.join(names)}")
    return {name: _array([len(instances), *shapes[name]], [v for row in rows for v in row], infos[name].dtype)
            for name, rows in columns.items()}


def _rows(instances: list, infos: Mapping, has_bools: bool) -> dict[str, np.ndarray]:
    first = instances[0]
    if not isinstance(first, dict) and len(infos) > 1:
        raise invalid("instances is a plain list, but expecting list of objects as multiple input tensors required "
                      "as per tensorinfo_map")
    objects = isinstance(first, dict) and not _is_b64(first)
    names = sorted(infos)
    # The fast path takes whole columns through numpy; anything it cannot take is walked again element by
    # element, so that the error is the one TF Serving reports first.
    if objects and all(isinstance(e, dict) and set(e) == set(names) for e in instances):
        columns = {name: [e[name] for e in instances] for name in names}
    elif not objects and not any(isinstance(e, dict) and not _is_b64(e) for e in instances):
        columns = {names[0]: instances}
    else:
        columns = None
    if columns is not None:
        try:
            return {name: _column(values, infos[name].dtype, has_bools) for name, values in columns.items()}
        except ServingError:
            pass
    return _rows_exact(instances, infos, objects)


def _column(values: list, dtype: int, has_bools: bool) -> np.ndarray:
    """One input's values from every instance, batched; ServingError if they do not make one dense tensor."""
    fast = _fast_floats(values, dtype, has_bools)
    if fast is not None and fast.ndim >= 1:
        return fast
    walked = [_exact(value, dtype) for value in values]
    if any(shape != walked[0][0] for shape, _ in walked):
        raise invalid("instances differ in shape")
    return _array([len(values), *walked[0][0]], [v for _, flat in walked for v in flat], dtype)


def _columns(value, infos: Mapping, has_bools: bool) -> dict[str, np.ndarray]:
    if not isinstance(value, dict) or _is_b64(value):
        if len(infos) > 1:
            raise invalid("inputs is a plain value/list, but expecting an object as multiple input tensors required "
                          "as per tensorinfo_map")
        (name,) = infos
        return {name: _tensor(value, infos[name].dtype, has_bools)}
    arrays = {}
    for name in sorted(infos):
        if name not in value:
            raise invalid(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = _tensor(value[name], infos[name].dtype, has_bools)
    return arrays


def parse_predict_request(body: bytes, request: predict_pb2.PredictRequest, inputs_of: InputsOf) -> str:
    """Fill `request` (its model spec already set from the URL) from a JSON body; returns ROW or COLUMNAR.

    `inputs_of(signature_name)` gives the signature's input TensorInfos by alias (or raises ServingError).
    """
    doc = _parse(body)
    if "signature_name" in doc:
        if not isinstance(doc["signature_name"], str):
            raise invalid(f"JSON Value: {preview(doc)} not formatted correctly. 'signature_name' key must be a "
                          "string value.")
        request.model_spec.signature_name = doc["signature_name"]
    infos = inputs_of(request.model_spec.signature_name)
    if not infos:
        raise invalid(f"Failed to get input map for signature: {request.model_spec.signature_name or 'DEFAULT'}")
    has_bools = b"true" in body or b"false" in body
    if "instances" in doc and "inputs" in doc:
        raise invalid(f"JSON Value: {preview(doc)} Not formatted correctly expecting only one of 'inputs' or "
                      "'instances' keys to exist ")
    if "instances" in doc:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise invalid(f"JSON Value: {preview(doc)} Excepting 'instances' to be an list/array")
        if not instances:
            raise invalid(f"JSON Value: {preview(doc)} No values in 'instances' array")
        arrays, form = _rows(instances, infos, has_bools), ROW
    elif "inputs" in doc:
        arrays, form = _columns(doc["inputs"], infos, has_bools), COLUMNAR
    else:
        raise invalid("Missing 'inputs' or 'instances' key")
    for name, array in arrays.items():
        request.inputs[name].CopyFrom(_proto(array, infos[name].dtype))
    return form


# ---- tensors to JSON -------------------------------------------------------------------------------

def _json_scalars(flat: np.ndarray, as_bytes: bool) -> list[str]:
    if flat.dtype.kind == "f":
        # numpy writes each value in the fewest digits that read back as the same float32 (or float64).
        texts = flat.astype(str).tolist()
        if not np.isfinite(flat).all():
            special = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
            texts = [special.get(t, t) for t in texts]
        return texts
    if flat.dtype.kind in "iu":
        return flat.astype(str).tolist()
    if flat.dtype.kind == "b":
        return ["true" if v else "false" for v in flat.tolist()]
    items = [v if isinstance(v, bytes) else str(v).encode() for v in flat.tolist()]
    if as_bytes:
        return [f'{{"b64": "{base64.b64encode(v).decode()}"}}' for v in items]
    return [json.dumps(v.decode("utf-8", errors="replace")) for v in items]


def _json_nested(array: np.ndarray, as_bytes: bool, from_axis: int) -> list[str]:
    """The JSON text of each sub-array below axis `from_axis` (0: one text for the whole array)."""
    if array.size == 0:
        lead = int(np.prod(array.shape[:from_axis])) if from_axis else 1
        inner = json.dumps(np.zeros(array.shape[from_axis:]).tolist())
        return [inner] * lead
    items = _json_scalars(array.ravel(), as_bytes)
    for size in reversed(array.shape[from_axis:]):
        items = ["[" + ",".join(items[i:i + size]) + "]" for i in range(0, len(items), size)]
    return items


def _bytes_output(name: str, proto: tensor_pb2.TensorProto) -> bool:
    return proto.dtype == types_pb2.DT_STRING and name.endswith(BYTES_SUFFIX)


def render_predict_response(response: predict_pb2.PredictResponse, form: str) -> bytes:
    """`{"predictions": ...}` for ROW requests, `{"outputs": ...}` for COLUMNAR ones, as TF Serving writes them."""
    if not response.outputs:
        raise invalid("Cannot convert empty tensor map to JSON")
    names = sorted(response.outputs)
    arrays = {name: to_numpy(response.outputs[name]) for name in names}
    as_bytes = {name: _bytes_output(name, response.outputs[name]) for name in names}
    if form == COLUMNAR:
        texts = {name: _json_nested(arrays[name], as_bytes[name], 0)[0] for name in names}
        if len(names) == 1:
            return f'{{"outputs": {texts[names[0]]}}}'.encode()
        return ('{"outputs": {' + ", ".join(f"{json.dumps(n)}: {texts[n]}" for n in names) + "}}").encode()
    batch = 0
    for name in names:
        shape = arrays[name].shape
        if not shape:
            raise invalid(f"Tensor name: {name} has no shape information ")
        if shape[0] < 1:
            raise invalid(f"Tensor name: {name} has invalid batch size: {shape[0]}")
        if batch and shape[0] != batch:
            raise invalid(f"Tensor name: {name} has inconsistent batch size: {shape[0]} expecting: {batch}")
        batch = shape[0]
    rows = {name: _json_nested(arrays[name], as_bytes[name], 1) for name in names}
    if len(names) == 1:
        items = rows[names[0]]
    else:
        keys = {name: json.dumps(name) for name in names}
        items = ["{" + ", ".join(f"{keys[n]}: {rows[n][i]}" for n in names) + "}" for i in range(batch)]
    return ('{"predictions": [' + ", ".join(items) + "]}").encode()


# ---- status, metadata and errors --------------------------------------------------------------

def render_status(response: get_model_status_pb2.GetModelStatusResponse) -> bytes:
    """GetModelStatusResponse as TF Serving's REST API writes it (`{"model_version_status": [...]}`)."""
    return json_format.MessageToJson(response, always_print_fields_with_no_presence=True, indent=1).encode()


def render_metadata(response: get_model_metadata_pb2.GetModelMetadataResponse) -> bytes:
    """GetModelMetadataResponse as TF Serving's REST API writes it: model_spec, then the unpacked SignatureDefMap."""
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[SIGNATURE_DEF].Unpack(signatures)
    options = {"always_print_fields_with_no_presence": True, "preserving_proto_field_name": True}
    document = {"model_spec": json_format.MessageToDict(response.model_spec, **options),
                "metadata": {SIGNATURE_DEF: json_format.MessageToDict(signatures, **options)}}
    return json.dumps(document, indent=1).encode()


def render_error(message: str) -> bytes:
    """`{"error": "..."}`."""
    return json.dumps({"error": message}).encode()
