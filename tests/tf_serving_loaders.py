"""TF Serving's own ways of loading a SavedModel, without TF Serving: the v1 Session loader and the C API.

TF Serving loads a version with C++ `LoadSavedModel` (tag `serve`) into a Session and runs signatures by
their SignatureDef tensor names. `tf.compat.v1.saved_model.loader.load` is that path from Python, and
`TF_LoadSessionFromSavedModel` in the wheel's `libtensorflow_cc.so.2` is the same C++ loader called
through ctypes. `disable_xla()` puts the process in the state TF Serving starts in unless run with
`--xla_cpu_compilation_enabled=true`; it cannot be undone, so run it in a subprocess:

    python -m tests.tf_serving_loaders INPUTS.npz OUT_DIR EXPORT_DIR... --disable-xla

runs every signature of every export through both loaders and writes, per model,
`OUT_DIR/<model>/<loader>.<signature>.npz` (outputs) and `OUT_DIR/<model>/errors.json`
(loader.signature -> error message).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

TF_DIR = Path(tf.__file__).parent
DTYPES = {1: np.float32, 3: np.int32, 7: object}  # TF_FLOAT, TF_INT32, TF_STRING
TF_CODES = {np.dtype(np.float32): 1, np.dtype(np.int32): 3}
TSTRING_SIZE = 24  # sizeof(TF_TString)


def disable_xla() -> None:
    """Call `tensorflow::DisableXlaCompilation()`, as `tensorflow_model_server` does by default."""
    lib = ctypes.CDLL(str(TF_DIR / "libtensorflow_cc.so.2"))
    lib._ZN10tensorflow21DisableXlaCompilationEv()


class V1Bundle:
    """A SavedModel in a graph Session through `tf.compat.v1.saved_model.loader.load`."""

    def __init__(self, export_dir: str | os.PathLike):
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            self.meta_graph = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], str(export_dir))

    def run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Feed and fetch by the SignatureDef's tensor names, as TF Serving's Predict does."""
        sig = self.meta_graph.signature_def[signature]
        feeds = {sig.inputs[key].name: value for key, value in inputs.items()}
        return self.session.run({key: info.name for key, info in sig.outputs.items()}, feeds)

    def close(self) -> None:
        self.session.close()


class _Output(ctypes.Structure):
    _fields_ = [("oper", ctypes.c_void_p), ("index", ctypes.c_int)]


class _Buffer(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("length", ctypes.c_size_t), ("data_deallocator", ctypes.c_void_p)]


def _c_api() -> ctypes.CDLL:
    cc = ctypes.CDLL(str(TF_DIR / "libtensorflow_cc.so.2"))
    framework = ctypes.CDLL(str(TF_DIR / "libtensorflow_framework.so.2"))
    p, i64p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64)
    signatures = {
        (framework, "TF_NewStatus"): ([], p), (framework, "TF_DeleteStatus"): ([p], None),
        (framework, "TF_GetCode"): ([p], ctypes.c_int), (framework, "TF_Message"): ([p], ctypes.c_char_p),
        (framework, "TF_NewBuffer"): ([], ctypes.POINTER(_Buffer)), (framework, "TF_DeleteBuffer"): ([p], None),
        (framework, "TF_AllocateTensor"): ([ctypes.c_int, i64p, ctypes.c_int, ctypes.c_size_t], p),
        (framework, "TF_TensorData"): ([p], p), (framework, "TF_DeleteTensor"): ([p], None),
        (framework, "TF_NumDims"): ([p], ctypes.c_int), (framework, "TF_Dim"): ([p, ctypes.c_int], ctypes.c_int64),
        (framework, "TF_TensorType"): ([p], ctypes.c_int),
        (framework, "TF_TensorByteSize"): ([p], ctypes.c_size_t),
        (cc, "TF_NewGraph"): ([], p), (cc, "TF_DeleteGraph"): ([p], None),
        (cc, "TF_NewSessionOptions"): ([], p), (cc, "TF_DeleteSessionOptions"): ([p], None),
        (cc, "TF_LoadSessionFromSavedModel"): ([p, p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int,
                                                p, p, p], p),
        (cc, "TF_GraphOperationByName"): ([p, ctypes.c_char_p], p),
        (cc, "TF_SessionRun"): ([p, p, ctypes.POINTER(_Output), ctypes.POINTER(p), ctypes.c_int,
                                 ctypes.POINTER(_Output), ctypes.POINTER(p), ctypes.c_int, p, ctypes.c_int, p, p], None),
        (cc, "TF_CloseSession"): ([p, p], None), (cc, "TF_DeleteSession"): ([p, p], None),
        (cc, "TF_StringInit"): ([p], None), (cc, "TF_StringCopy"): ([p, ctypes.c_char_p, ctypes.c_size_t], None),
        (cc, "TF_StringGetDataPointer"): ([p], p), (cc, "TF_StringGetSize"): ([p], ctypes.c_size_t),
    }
    api = type("CApi", (), {})()
    for (lib, name), (args, result) in signatures.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = args, result
        setattr(api, name, function)
    return api


class CApiError(RuntimeError):
    """A non-OK TF_Status: `code` is TensorFlow's (= gRPC's) status code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class CApiBundle:
    """A SavedModel loaded by `TF_LoadSessionFromSavedModel`, the C++ loader TF Serving uses."""

    def __init__(self, export_dir: str | os.PathLike):
        self.api = api = _c_api()
        self.graph = api.TF_NewGraph()
        options = api.TF_NewSessionOptions()
        meta_buffer = api.TF_NewBuffer()
        tags = (ctypes.c_char_p * 1)(b"serve")
        try:
            self.session = self._check(lambda status: api.TF_LoadSessionFromSavedModel(
                options, None, str(export_dir).encode(), tags, 1, self.graph,
                ctypes.cast(meta_buffer, ctypes.c_void_p), status))
            self.meta_graph = meta_graph_pb2.MetaGraphDef.FromString(
                ctypes.string_at(meta_buffer.contents.data, meta_buffer.contents.length))
        finally:
            api.TF_DeleteBuffer(ctypes.cast(meta_buffer, ctypes.c_void_p))
            api.TF_DeleteSessionOptions(options)

    def _check(self, call):
        status = self.api.TF_NewStatus()
        try:
            result = call(status)
            code = self.api.TF_GetCode(status)
            if code != 0:
                raise CApiError(code, self.api.TF_Message(status).decode(errors="replace"))
            return result
        finally:
            self.api.TF_DeleteStatus(status)

    def _output(self, tensor_name: str) -> _Output:
        op_name, _, index = tensor_name.partition(":")
        oper = self.api.TF_GraphOperationByName(self.graph, op_name.encode())
        if not oper:
            raise KeyError(f"no operation {op_name!r} in the loaded graph")
        return _Output(oper, int(index or 0))

    def _to_tensor(self, array: np.ndarray) -> int:
        dims = (ctypes.c_int64 * array.ndim)(*array.shape)
        if array.dtype == object or array.dtype.kind in "SU":
            items = [x if isinstance(x, bytes) else str(x).encode() for x in array.ravel()]
            tensor = self.api.TF_AllocateTensor(7, dims, array.ndim, TSTRING_SIZE * len(items))
            base = self.api.TF_TensorData(tensor)
            for k, item in enumerate(items):
                self.api.TF_StringInit(base + k * TSTRING_SIZE)
                self.api.TF_StringCopy(base + k * TSTRING_SIZE, item, len(item))
            return tensor
        array = np.ascontiguousarray(array)
        tensor = self.api.TF_AllocateTensor(TF_CODES[array.dtype], dims, array.ndim, array.nbytes)
        ctypes.memmove(self.api.TF_TensorData(tensor), array.ctypes.data, array.nbytes)
        return tensor

    def _to_numpy(self, tensor: int) -> np.ndarray:
        shape = tuple(self.api.TF_Dim(tensor, d) for d in range(self.api.TF_NumDims(tensor)))
        dtype = DTYPES[self.api.TF_TensorType(tensor)]
        base = self.api.TF_TensorData(tensor)
        if dtype is object:
            count = int(np.prod(shape))
            items = [ctypes.string_at(self.api.TF_StringGetDataPointer(base + k * TSTRING_SIZE),
                                      self.api.TF_StringGetSize(base + k * TSTRING_SIZE)) for k in range(count)]
            return np.array(items, dtype=object).reshape(shape)
        size = self.api.TF_TensorByteSize(tensor)
        return np.frombuffer(ctypes.string_at(base, size), dtype=dtype).reshape(shape).copy()

    def run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`TF_SessionRun` fed and fetched by the SignatureDef's tensor names."""
        sig = self.meta_graph.signature_def[signature]
        keys = sorted(sig.outputs)
        feeds = (_Output * len(inputs))(*[self._output(sig.inputs[k].name) for k in inputs])
        values = (ctypes.c_void_p * len(inputs))(*[self._to_tensor(np.asarray(v)) for v in inputs.values()])
        fetches = (_Output * len(keys))(*[self._output(sig.outputs[k].name) for k in keys])
        results = (ctypes.c_void_p * len(keys))()
        try:
            self._check(lambda status: self.api.TF_SessionRun(
                self.session, None, feeds, values, len(inputs), fetches, results, len(keys), None, 0, None, status))
            return {k: self._to_numpy(results[i]) for i, k in enumerate(keys)}
        finally:
            for tensor in list(values) + [r for r in results if r]:
                self.api.TF_DeleteTensor(tensor)

    def close(self) -> None:
        status = self.api.TF_NewStatus()
        self.api.TF_CloseSession(self.session, status)
        self.api.TF_DeleteSession(self.session, status)
        self.api.TF_DeleteStatus(status)
        self.api.TF_DeleteGraph(self.graph)


LOADERS = {"v1": V1Bundle, "c_api": CApiBundle}


def run_all(export_dir: Path, inputs: dict[str, np.ndarray], out_dir: Path) -> None:
    """Run every signature through every loader; write outputs per loader and signature, errors to JSON."""
    out_dir.mkdir(parents=True, exist_ok=True)
    errors = {}
    for loader_name, loader in LOADERS.items():
        bundle = loader(export_dir)
        for signature, sig in bundle.meta_graph.signature_def.items():
            if signature.startswith("__"):  # __saved_model_init_op: run by the loader itself
                continue
            feeds = {key: inputs[key] for key in sig.inputs}
            try:
                outputs = bundle.run(signature, feeds)
            except (tf.errors.OpError, CApiError) as err:
                errors[f"{loader_name}.{signature}"] = getattr(err, "message", str(err))
                continue
            np.savez(out_dir / f"{loader_name}.{signature}.npz", **outputs)
        bundle.close()
    (out_dir / "errors.json").write_text(json.dumps(errors, indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run SavedModels through TF Serving's loaders.")
    parser.add_argument("inputs", type=Path, help=".npz with one array per signature input name")
    parser.add_argument("out_dir", type=Path, help="results go to OUT_DIR/<model name>/")
    parser.add_argument("export_dirs", type=Path, nargs="+")
    parser.add_argument("--disable-xla", action="store_true", help="as tensorflow_model_server does by default")
    args = parser.parse_args(argv)
    if args.disable_xla:
        disable_xla()
    with np.load(args.inputs, allow_pickle=True) as data:
        inputs = {key: data[key] for key in data.files}
    for export_dir in args.export_dirs:
        run_all(export_dir, inputs, args.out_dir / export_dir.parent.name)


if __name__ == "__main__":
    sys.exit(main())
