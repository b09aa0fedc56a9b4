"""Import Levi & Hassner's Caffe models (`deploy.prototxt` + `.caffemodel` [+ `mean.binaryproto`]) without Caffe."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import keras
import numpy as np
from google.protobuf import message as protobuf_message
from google.protobuf import text_format

from psyattr.models.caffe_proto import V1_LAYER_TYPES, BlobProto, NetParameter
from psyattr.models.layers import LEVI_HASSNER_BGR_MEAN
from psyattr.models.levi_hassner import CLASS_NAMES, build_levi_hassner, check_task

WEIGHTED_LAYERS = ("conv1", "conv2", "conv3", "fc6", "fc7", "fc8")
_V1_NAMES = {value: name for name, value in V1_LAYER_TYPES.items()}
_V1_TO_V2 = {"CONVOLUTION": "Convolution", "INNER_PRODUCT": "InnerProduct", "POOLING": "Pooling", "LRN": "LRN",
             "RELU": "ReLU", "DROPOUT": "Dropout", "SOFTMAX": "Softmax", "DATA": "Data", "FLATTEN": "Flatten"}


class CaffeImportError(ValueError):
    """A Caffe file that cannot be read, or that does not fit the Levi-Hassner net."""


def _parse_binary(path: Path, message_class, what: str):
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CaffeImportError(f"cannot read {what} {path}: {err}") from err
    if not data:
        raise CaffeImportError(f"{path} is empty: expected a binary Caffe {what}")
    try:
        return message_class.FromString(data)
    except (protobuf_message.DecodeError, RuntimeError, ValueError) as err:
        raise CaffeImportError(
            f"{path} is not a binary Caffe {what} (protobuf decoding failed: {err}); "
            "is the file truncated or of another kind?"
        ) from err


def _layer_type(layer) -> str:
    if isinstance(layer.type, int):
        name = _V1_NAMES.get(layer.type, str(layer.type))
        return _V1_TO_V2.get(name, name)
    return layer.type


def net_layers(net) -> list:
    """The layers of a NetParameter, from the V2 `layer` field or the V1 `layers` field."""
    return list(net.layer) if len(net.layer) else list(net.layers)


def blob_to_array(blob) -> np.ndarray:
    """A BlobProto as a float32 array of its declared shape (new `shape` or legacy num/channels/height/width)."""
    values = np.asarray(blob.double_data if len(blob.double_data) else blob.data, dtype=np.float32)
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    else:
        shape = tuple(int(d) for d in (blob.num, blob.channels, blob.height, blob.width))
        # Legacy inner-product blobs are stored as (1, 1, out, in).
        while len(shape) > 1 and shape[0] == 1 and int(np.prod(shape[1:])) == values.size:
            shape = shape[1:]
    if int(np.prod(shape)) != values.size:
        raise CaffeImportError(f"blob declares shape {shape} but holds {values.size} values")
    return values.reshape(shape)


def read_caffemodel(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """Read the weight blobs of a binary `.caffemodel` (V1 or V2 format): {layer name: [blobs]}."""
    path = Path(path)
    net = _parse_binary(path, NetParameter, "model (.caffemodel)")
    blobs = {}
    for layer in net_layers(net):
        if len(layer.blobs):
            try:
                blobs[layer.name] = [blob_to_array(b) for b in layer.blobs]
            except CaffeImportError as err:
                raise CaffeImportError(f"{path}: layer {layer.name!r}: {err}") from None
    if not blobs:
        raise CaffeImportError(f"{path} holds no layer with weights: is it a .caffemodel (not a prototxt or solver)?")
    return blobs


def read_prototxt(path: str | os.PathLike):
    """Parse a deploy `.prototxt` (V1 or V2) into a NetParameter; unknown fields are ignored."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise CaffeImportError(f"cannot read prototxt {path}: {err}") from err
    except UnicodeDecodeError as err:
        raise CaffeImportError(f"{path} is not a Caffe prototxt: it is not text ({err.reason} at byte {err.start}); "
                               "pass the deploy.prototxt first, then the .caffemodel") from err
    net = NetParameter()
    try:
        text_format.Parse(text, net, allow_unknown_field=True)
    except text_format.ParseError as err:
        raise CaffeImportError(f"{path} is not a Caffe prototxt: {err}") from err
    if not net_layers(net):
        raise CaffeImportError(f"{path} defines no layers: expected a Caffe deploy.prototxt")
    return net


def read_mean(path: str | os.PathLike) -> tuple[float, float, float]:
    """Per-channel BGR means of a Caffe `mean.binaryproto` (a (1, 3, H, W) mean image, BGR)."""
    path = Path(path)
    try:
        mean = blob_to_array(_parse_binary(path, BlobProto, "mean file (.binaryproto)"))
    except CaffeImportError:
        raise
    if mean.ndim < 3 or mean.reshape(-1, *mean.shape[-2:]).shape[0] != 3:
        raise CaffeImportError(f"{path}: expected a mean image of 3 channels (1, 3, H, W), got shape {mean.shape}")
    return tuple(float(m) for m in mean.reshape(3, -1).mean(axis=1))


def _first(values: Sequence[int], default: int) -> int:
    return int(values[0]) if len(values) else default


def _architecture_from_prototxt(net) -> dict[str, dict[str, int]]:
    arch = {}
    for layer in net_layers(net):
        kind = _layer_type(layer)
        if kind == "Convolution":
            p = layer.convolution_param
            arch[layer.name] = {"num_output": p.num_output, "kernel": p.kernel_h or _first(p.kernel_size, 0),
                                "stride": p.stride_h or _first(p.stride, 1), "pad": p.pad_h or _first(p.pad, 0)}
        elif kind == "InnerProduct":
            arch[layer.name] = {"num_output": layer.inner_product_param.num_output}
    return arch


def _expected_architecture(model: keras.Model) -> dict[str, dict[str, int]]:
    arch = {}
    for name in WEIGHTED_LAYERS:
        layer = model.get_layer(name)
        if isinstance(layer, keras.layers.Conv2D):
            kernel = layer.kernel_size[0]
            arch[name] = {"num_output": layer.filters, "kernel": kernel, "stride": layer.strides[0],
                          "pad": (kernel - 1) // 2 if layer.padding == "same" else 0}
        else:
            arch[name] = {"num_output": layer.units}
    return arch


def caffe_to_keras(name: str, blob: np.ndarray, keras_shape: Sequence[int]) -> np.ndarray:
    """Map one Caffe weight blob to the Keras layout: OIHW to HWIO, (out, in) to (in, out), fc6's flatten order."""
    if blob.ndim == 4:
        return blob.transpose(2, 3, 1, 0)
    if blob.ndim == 2 and name == "fc6":
        # Caffe flattens pool5 as (C, H, W), Keras as (H, W, C): reorder the 18816 inputs.
        out_units = blob.shape[0]
        return blob.reshape(out_units, 384, 7, 7).transpose(2, 3, 1, 0).reshape(-1, out_units)
    if blob.ndim == 2:
        return blob.T
    return blob


def _caffe_shape(keras_shape: Sequence[int]) -> tuple[int, ...]:
    if len(keras_shape) == 4:
        h, w, i, o = keras_shape
        return (o, i, h, w)
    if len(keras_shape) == 2:
        return (keras_shape[1], keras_shape[0])
    return tuple(keras_shape)


def keras_weights_from_caffe(
    model: keras.Model, blobs: Mapping[str, Sequence[np.ndarray]], source: str = "caffemodel"
) -> dict[str, list[np.ndarray]]:
    """Convert and shape-check every weighted layer's blobs for `model`; raise before anything is assigned."""
    task_hint = {len(v): k for k, v in CLASS_NAMES.items()}
    converted = {}
    for name in WEIGHTED_LAYERS:
        if name not in blobs:
            raise CaffeImportError(f"{source} has no weights for layer {name!r} (it has: {', '.join(blobs) or 'none'})")
        layer = model.get_layer(name)
        expected = [tuple(v.shape) for v in layer.weights]
        found = list(blobs[name])
        if len(found) != len(expected):
            raise CaffeImportError(f"layer {name!r}: {source} has {len(found)} blobs, the Keras layer needs {len(expected)}")
        arrays = []
        for index, (blob, shape) in enumerate(zip(found, expected)):
            blob = np.asarray(blob, dtype=np.float32)
            if blob.ndim == 1 or len(shape) == 1:
                blob = blob.reshape(-1)
            want = _caffe_shape(shape)
            if tuple(blob.shape) != want:
                hint = ""
                if name == "fc8" and blob.shape[0] in task_hint and len(shape) > 1:
                    hint = f" (this looks like the {task_hint[blob.shape[0]]} net: pass --task {task_hint[blob.shape[0]]})"
                what = "weights" if index == 0 else "biases"
                raise CaffeImportError(
                    f"layer {name!r}: {source} has {what} of shape {tuple(blob.shape)}, "
                    f"the {model.name} expects {want} (Caffe layout){hint}"
                )
            arrays.append(caffe_to_keras(name, blob, shape))
        converted[name] = arrays
    return converted


def check_prototxt(net, model: keras.Model, source: str) -> None:
    """Compare a prototxt's conv/inner-product hyper-parameters with `model`, naming the first difference."""
    declared = _architecture_from_prototxt(net)
    expected = _expected_architecture(model)
    for name, want in expected.items():
        if name not in declared:
            raise CaffeImportError(f"{source} has no layer {name!r}: expected the Levi-Hassner layers "
                                   f"{', '.join(WEIGHTED_LAYERS)}")
        for key, value in want.items():
            got = declared[name].get(key)
            if got != value:
                raise CaffeImportError(f"layer {name!r}: {source} declares {key} {got}, the {model.name} has {value}")


def load_caffe(
    prototxt: str | os.PathLike,
    caffemodel: str | os.PathLike,
    task: str,
    mean: str | os.PathLike | None = None,
) -> keras.Model:
    """Build the `task` net and fill it from Caffe files; every check passes before any weight is set."""
    check_task(task)
    bgr_mean = read_mean(mean) if mean is not None else LEVI_HASSNER_BGR_MEAN
    model = build_levi_hassner(len(CLASS_NAMES[task]), name=f"{task}_net", bgr_mean=bgr_mean)
    net = read_prototxt(prototxt)
    check_prototxt(net, model, f"prototxt {prototxt}")
    blobs = read_caffemodel(caffemodel)
    converted = keras_weights_from_caffe(model, blobs, f"caffemodel {caffemodel}")
    declared = _architecture_from_prototxt(net)
    for name in WEIGHTED_LAYERS:
        outputs = converted[name][0].shape[-1]
        if declared[name]["num_output"] != outputs:
            raise CaffeImportError(
                f"layer {name!r}: prototxt {prototxt} declares {declared[name]['num_output']} outputs, "
                f"caffemodel {caffemodel} has {outputs}: the two files do not belong together"
            )
    for name, arrays in converted.items():
        model.get_layer(name).set_weights(arrays)
    return model


def keras_to_caffe(model: keras.Model) -> dict[str, list[np.ndarray]]:
    """The inverse mapping: a Levi-Hassner Keras model's weights as Caffe blobs {layer: [weights, bias]}."""
    blobs = {}
    for name in WEIGHTED_LAYERS:
        kernel, bias = (np.asarray(w) for w in model.get_layer(name).get_weights())
        if kernel.ndim == 4:
            kernel = kernel.transpose(3, 2, 0, 1)
        elif name == "fc6":
            out_units = kernel.shape[1]
            kernel = kernel.reshape(7, 7, 384, out_units).transpose(3, 2, 0, 1).reshape(out_units, -1)
        else:
            kernel = kernel.T
        blobs[name] = [kernel, bias]
    return blobs


def write_caffemodel(path: str | os.PathLike, blobs: Mapping[str, Sequence[np.ndarray]], v1: bool = False) -> None:
    """Write weight blobs {layer: [weights, bias]} as a binary `.caffemodel` (V2 `layer`, or V1 `layers`)."""
    net = NetParameter(name="levi_hassner")
    for name, arrays in blobs.items():
        if v1:
            layer = net.layers.add(name=name)
            layer.type = V1_LAYER_TYPES["CONVOLUTION" if np.ndim(arrays[0]) == 4 else "INNER_PRODUCT"]
        else:
            layer = net.layer.add(name=name, type="Convolution" if np.ndim(arrays[0]) == 4 else "InnerProduct")
        for array in arrays:
            blob = layer.blobs.add()
            blob.shape.dim.extend(int(d) for d in np.shape(array))
            blob.data.extend(np.asarray(array, dtype=np.float32).ravel().tolist())
    Path(path).write_bytes(net.SerializeToString())


def write_mean(path: str | os.PathLike, bgr_mean: Sequence[float], size: int = 256) -> None:
    """Write a constant (1, 3, size, size) BGR mean image as a Caffe `mean.binaryproto`."""
    blob = BlobProto(num=1, channels=3, height=size, width=size)
    image = np.broadcast_to(np.asarray(bgr_mean, np.float32)[:, None, None], (3, size, size))
    blob.data.extend(image.ravel().tolist())
    Path(path).write_bytes(blob.SerializeToString())


def deploy_prototxt(task: str, v1: bool = False) -> str:
    """The Levi-Hassner deploy.prototxt for `task`, in the V2 (`layer`) or V1 (`layers`) format."""
    check_task(task)
    classes = len(CLASS_NAMES[task])
    conv = lambda n, k, s, p: {"convolution_param": f"num_output: {n} kernel_size: {k} stride: {s} pad: {p}"}  # noqa: E731
    pool = {"pooling_param": "pool: MAX kernel_size: 3 stride: 2"}
    lrn = {"lrn_param": "local_size: 5 alpha: 0.0001 beta: 0.75"}
    fc = lambda n: {"inner_product_param": f"num_output: {n}"}  # noqa: E731
    plan = [
        ("conv1", "Convolution", "data", conv(96, 7, 4, 0)), ("relu1", "ReLU", "conv1", {}),
        ("pool1", "Pooling", "conv1", pool), ("norm1", "LRN", "pool1", lrn),
        ("conv2", "Convolution", "norm1", conv(256, 5, 1, 2)), ("relu2", "ReLU", "conv2", {}),
        ("pool2", "Pooling", "conv2", pool), ("norm2", "LRN", "pool2", lrn),
        ("conv3", "Convolution", "norm2", conv(384, 3, 1, 1)), ("relu3", "ReLU", "conv3", {}),
        ("pool5", "Pooling", "conv3", pool),
        ("fc6", "InnerProduct", "pool5", fc(512)), ("relu6", "ReLU", "fc6", {}),
        ("drop6", "Dropout", "fc6", {"dropout_param": "dropout_ratio: 0.5"}),
        ("fc7", "InnerProduct", "fc6", fc(512)), ("relu7", "ReLU", "fc7", {}),
        ("drop7", "Dropout", "fc7", {"dropout_param": "dropout_ratio: 0.5"}),
        ("fc8", "InnerProduct", "fc7", fc(classes)), ("prob", "Softmax", "fc8", {}),
    ]
    in_place = {"ReLU", "Dropout"}
    v1_types = {v: k for k, v in _V1_TO_V2.items()}
    lines = [f'name: "{task.capitalize()}Net"', 'input: "data"',
             "input_dim: 1", "input_dim: 3", "input_dim: 227", "input_dim: 227"]
    for name, kind, bottom, params in plan:
        top = bottom if kind in in_place else name
        type_text = v1_types[kind] if v1 else f'"{kind}"'
        body = [f'name: "{name}"', f"type: {type_text}", f'bottom: "{bottom}"', f'top: "{top}"']
        body += [f"{key} {{ {value} }}" for key, value in params.items()]
        lines.append(("layers" if v1 else "layer") + " {\n  " + "\n  ".join(body) + "\n}")
    return "\n".join(lines) + "\n"
