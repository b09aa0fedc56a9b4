"""Request validation before any compute: TF Serving's checks and messages, then dtype, shape and value checks.

TF Serving itself checks input names (with the messages reproduced here) and leaves dtype and shape to the
Session; psyattr's exports check NaN pixels and targets inside the graph. The embedded server checks
everything up front, so that one bad request never reaches a batch shared with good ones.
"""

from __future__ import annotations

import numpy as np
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import predict_pb2

from psyattr.models.outputs import parse_target
from psyattr.serving.errors import ServingError, clip, invalid
from psyattr.serving.tensors import dtype_name, to_numpy

_FLOAT_KINDS = "f"


def _shape_text(dims) -> str:
    return "(" + ", ".join("N" if i == 0 and d < 0 else ("?" if d < 0 else str(d)) for i, d in enumerate(dims)) + ")"


def _check_names(signature: meta_graph_pb2.SignatureDef, request: predict_pb2.PredictRequest) -> None:
    expected, sent = set(signature.inputs), set(request.inputs)
    if len(sent) != len(expected):
        message = (
            f"input size does not match signature: {len(sent)}!={len(expected)} len({{{_names(sent)}}}) "
            f"!= len({{{','.join(sorted(expected))}}}). Sent extra: {{{_names(sent - expected)}}}. "
            f"Missing but required: {{{','.join(sorted(expected - sent))}}}.")
        raise invalid(message)
    for alias in sorted(expected):
        if alias not in sent:
            raise invalid(f"Signature input alias: {alias}(feed name: {signature.inputs[alias].name}) not found in "
                          f"request and no default value provided. Inputs expected to be in the request "
                          f"{{{_names(sent)}}}, or default input alias set: ")


def _names(sent) -> str:
    return clip(",".join(sorted(sent)), 200)


def _check_targets(values: np.ndarray, output_names: list[str]) -> None:
    # The rule of the exported graph itself (psyattr.models.outputs.parse_target): a request that passes here
    # cannot fail the graph's own check, so it never spoils a batch it shares with other requests.
    for i, raw in enumerate(values.ravel()):
        try:
            parse_target(raw, output_names, "the model")
        except ValueError as err:
            raise invalid(f"{err} (image {i})") from None


def validate_request(
    signature: meta_graph_pb2.SignatureDef,
    request: predict_pb2.PredictRequest,
    output_names: list[str],
    max_batch_size: int | None = None,
) -> tuple[dict[str, np.ndarray], int]:
    """The request's inputs as numpy arrays by alias, and its batch size; ServingError for anything wrong.

    Shapes are checked as declared before any tensor is decoded, so that a small request claiming a huge
    shape never allocates it.
    """
    _check_names(signature, request)
    shapes = {}
    for alias, info in sorted(signature.inputs.items()):
        proto = request.inputs[alias]
        if proto.dtype != info.dtype:
            raise invalid(f"input {alias!r} must be {dtype_name(info.dtype)}, got {dtype_name(proto.dtype)}"
                          + (": send float32 pixel values 0..255" if alias == "image" else ""))
        shape = tuple(d.size for d in proto.tensor_shape.dim)
        _check_shape(alias, info, shape)
        shapes[alias] = shape
    sizes = {alias: shape[0] for alias, shape in shapes.items()}
    if len(set(sizes.values())) > 1:
        raise invalid("inputs must hold the same number of rows: "
                      + ", ".join(f"{alias} has {size}" for alias, size in sizes.items()))
    batch = next(iter(sizes.values()))
    if max_batch_size is not None and batch > max_batch_size:
        raise invalid(f"Task size {batch} is larger than maximum input batch size {max_batch_size}: send at most "
                      f"{max_batch_size} images per request (max_batch_size in the batching parameters)")
    feeds: dict[str, np.ndarray] = {}
    for alias in shapes:
        try:
            value = to_numpy(request.inputs[alias], writable=False)  # fed to the Session, never written
        except (ValueError, TypeError):
            raise invalid(f"tensor parsing error: {alias}") from None
        if value.dtype.kind in _FLOAT_KINDS and not np.isfinite(value).all():
            rows = np.flatnonzero(~np.isfinite(value.reshape(len(value), -1)).all(axis=1))
            raise invalid(f"input {alias!r} contains NaN or infinite values (rows {', '.join(map(str, rows[:10]))})")
        feeds[alias] = value
    if "target" in feeds and output_names:
        _check_targets(feeds["target"], output_names)
    if "photo" in feeds:
        _check_photos(feeds["photo"])
    return feeds, batch


def _check_photos(values: np.ndarray) -> None:
    # Each photo is decoded here first, so that one that is no image is refused alone, by its number, before it can
    # fail a batch shared with other requests.
    import io

    from PIL import Image, UnidentifiedImageError

    for i, raw in enumerate(values.ravel()):
        data = raw if isinstance(raw, bytes) else str(raw).encode()
        try:
            with Image.open(io.BytesIO(data)) as image:
                if image.format not in ("JPEG", "PNG", "GIF", "BMP"):
                    raise ValueError(f"a {image.format} image")
                image.load()
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            raise invalid(f"photo {i} is not a complete JPEG, PNG, GIF or BMP image ({str(err)[:80]}): send the "
                          "file's bytes as they are") from None


def _check_shape(alias: str, info, shape: tuple[int, ...]) -> None:
    dims = [d.size for d in info.tensor_shape.dim]
    if any(s < 0 for s in shape):
        raise invalid(f"tensor parsing error: {alias} (negative dimension in shape {shape})")
    if not info.tensor_shape.unknown_rank:
        if len(shape) != len(dims):
            hint = ": add a batch axis" if len(shape) == len(dims) - 1 else ""
            raise invalid(f"input {alias!r} must have {len(dims)} dimensions {_shape_text(dims)}, got "
                          f"{len(shape)} {shape}{hint}")
        if any(d >= 0 and d != s for d, s in zip(dims, shape)):
            raise invalid(f"input {alias!r} must have shape {_shape_text(dims)}, got {shape}")
    if not shape:
        raise invalid(f"input {alias!r} must be a batch, got a scalar")
    if shape[0] == 0:
        raise invalid(f"input {alias!r} is an empty batch (0 rows)")


def output_aliases(signature: meta_graph_pb2.SignatureDef, request: predict_pb2.PredictRequest) -> list[str]:
    """The outputs to return: the request's `output_filter` (checked as TF Serving does) or all of them."""
    if not request.output_filter:
        return sorted(signature.outputs)
    seen: list[str] = []
    for alias in request.output_filter:
        if alias not in signature.outputs:
            raise invalid(f"output tensor alias not found in signature: {clip(alias)} Outputs expected to be in the set "
                          f"{{{','.join(sorted(signature.outputs))}}}.")
        if alias in seen:
            raise invalid(f"duplicate output tensor alias: {clip(alias)}")
        seen.append(alias)
    return seen


__all__ = ["ServingError", "output_aliases", "validate_request"]
