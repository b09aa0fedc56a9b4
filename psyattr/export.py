"""TensorFlow Serving exports: `saved_models/<name>/<version>/` with predict and explain signatures.

Signatures (all take `image`: float32 `(N, 227, 227, 3)`, RGB pixel values 0..255):

- `serving_default`: one `(N,)` output per model output. Attribute regressors give `score_<attribute>`
  (in [0, 1]) and `rating_<attribute>` (on the attribute's rating scale); classifiers give
  `prob_<class>` (softmax) and `logit_<class>`.
- `explain`: also takes `target`: string `(N,)`, per image the output to explain: its name (`happy`,
  `female`, `25-32`), its index as text (`"0"`), or `""` for the image's top output. Returns the
  `serving_default` outputs plus `target` (the explained output's name), `target_score` (its
  pre-activation: the logit or unclipped score, which the relevance sums to) and `heatmap`
  `(N, 227, 227)` (LRP relevance summed over the colour channels). Traced without XLA.
- `explain_xla`: the same under XLA; it only runs where XLA may compile (TF Serving with
  `--xla_cpu_compilation_enabled=true`, `psyattr serve --xla-cpu-compilation-enabled`).
- `predict_image` and `explain_image`: the same as `serving_default` and `explain`, taking `photo`: string
  `(N,)`, one encoded JPEG, PNG, GIF or BMP file per element, already framed as the model expects (the
  256 px frame of `psyattr.json`'s framing; other sizes are resized to it). Decoding runs in the graph with
  core TensorFlow ops. A photo that is no image fails the request (INVALID_ARGUMENT, naming the element):
  `psyattr serve` checks every photo before it runs, and `ExplainerClient` sends the others again.
- `metadata`: takes `request`: string `(N,)` (any text) and returns `psyattr_json` `(N,)`, the export's
  `psyattr.json`: the outputs, their rating scales and the framing its photos need. Clients read it to
  frame photos as the model expects before sending them.

The scores of `explain` come from the same forward pass that the relevance graph explains.

Output keys are the output names in snake_case (`25-32` becomes `prob_25_32`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from psyattr import __version__
from psyattr.faces.framing import FROM_MODEL, resolve_framing
from psyattr.lrp.explainer import LRPExplainer
from psyattr.models.layers import AttributeScores
from psyattr.models.weights import recorded_framing

log = logging.getLogger(__name__)

SIGNATURES = ("serving_default", "explain", "explain_xla", "metadata", "predict_image", "explain_image")
FRAME_SIZE = 256
WARMUP_FILE = "tf_serving_warmup_requests"
METADATA_FILE = "psyattr.json"
ASSETS_EXTRA = "assets.extra"
DEFAULT_COMPOSITE = "alpha2beta1"
# TF Serving accepts any name as a folder name; keep to what is safe in paths, URLs and configs.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ExportError(ValueError):
    """A model or export request that cannot become a TF Serving version."""


def output_key(name: str) -> str:
    """An output name in snake_case, usable as a signature key (`25-32` -> `25_32`, `Happy` -> `happy`)."""
    key = re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")
    if not key:
        raise ExportError(f"output name {name!r} has no letters or digits to build a signature key from")
    return key


MAX_VERSION = 2**63 - 1  # TF Serving's versions are int64
_VERSION_NAME = re.compile(r"[0-9]+")


def list_versions(model_dir: str | os.PathLike) -> list[int]:
    """The integer version folders under `model_dir`, ascending (what TF Serving would consider).

    Folders named by a number beyond TF Serving's int64 range are skipped with a log line, as TF Serving does.
    """
    path = Path(model_dir)
    if not path.is_dir():
        return []
    versions = []
    for entry in path.iterdir():
        if entry.is_dir() and _VERSION_NAME.fullmatch(entry.name):
            if int(entry.name) > MAX_VERSION:
                log.warning("skipped %s: version %s is beyond TF Serving's largest (%d)", entry,
                            entry.name[:30], MAX_VERSION)
                continue
            versions.append(int(entry.name))
    return sorted(versions)


def clean_stale_staging(model_dir: Path, older_than: float = 3600.0) -> list[Path]:
    """Remove staging folders (`.N.partial-*`) of exports killed over `older_than` seconds ago; return them.

    An export still writing keeps touching its folder, so a live one is never this old.
    """
    removed = []
    if not model_dir.is_dir():
        return removed
    now = time.time()
    for entry in model_dir.glob(".*.partial-*"):
        try:
            newest = max([entry.stat().st_mtime] + [p.stat().st_mtime for p in entry.rglob("*")])
        except OSError:
            continue
        if now - newest > older_than:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
            log.info("removed %s, left by an export that did not finish", entry)
    return removed


@dataclass(frozen=True)
class ServingHeads:
    """How a model's outputs become named signature outputs."""

    kind: str  # "regressor" or "classifier"
    output_names: list[str]
    keys: dict[str, list[str]]  # output kind ("score", "rating", "prob", "logit") -> one key per output


def serving_heads(model: keras.Model, output_names: list[str]) -> ServingHeads:
    """Describe the named outputs of `model` (attribute regressor or classifier)."""
    snake = [output_key(n) for n in output_names]
    if len(set(snake)) != len(snake):
        raise ExportError(f"output names {output_names} collide in snake_case ({snake}): rename the outputs")
    regressor = any(isinstance(layer, AttributeScores) for layer in model.layers)
    kinds = ("score", "rating") if regressor else ("prob", "logit")
    return ServingHeads("regressor" if regressor else "classifier", list(output_names),
                        {kind: [f"{kind}_{k}" for k in snake] for kind in kinds})


class SignatureBuilder:
    """The traced functions behind the exported signatures of one model."""

    def __init__(self, model: keras.Model, composite: str = DEFAULT_COMPOSITE):
        if len(model.inputs) != 1 or tuple(model.inputs[0].shape[1:]) != (227, 227, 3):
            raise ExportError(f"{model.name} must take one (N, 227, 227, 3) image input, it takes "
                              f"{[tuple(t.shape) for t in model.inputs]}")
        explainer = LRPExplainer(model, composite, jit_compile=False)
        if explainer.method != "lrp":
            raise ExportError(f"composite {composite!r} is a gradient method: export an LRP composite")
        self.model = model
        self.composite = explainer.name
        self.graph = explainer.graph
        self.heads = serving_heads(model, explainer.output_names)
        # One forward pass gives both the model's outputs and the explained layer's pre-activations.
        self._both = keras.Model(model.inputs, [model.outputs[0], self.graph.start_layer.output])
        self.scores_layer = next((layer for layer in model.layers if isinstance(layer, AttributeScores)), None)
        self._names = tf.constant(self.heads.output_names)
        image = tf.TensorSpec((None, 227, 227, 3), tf.float32, name="image")
        target = tf.TensorSpec((None,), tf.string, name="target")
        index = tf.TensorSpec((None,), tf.int32, name="index")
        photo = tf.TensorSpec((None,), tf.string, name="photo")
        self._core = tf.function(self._explain_core, input_signature=[image, index], jit_compile=False)
        self._core_xla = tf.function(self._explain_core, input_signature=[image, index], jit_compile=True)
        self.metadata_json = ""
        self.functions = {
            "serving_default": tf.function(self._predict, input_signature=[image]),
            "explain": tf.function(self._explain, input_signature=[image, target]),
            "explain_xla": tf.function(self._explain_xla, input_signature=[image, target]),
            "metadata": tf.function(self._metadata_signature,
                                    input_signature=[tf.TensorSpec((None,), tf.string, name="request")]),
            "predict_image": tf.function(self._predict_image, input_signature=[photo]),
            "explain_image": tf.function(self._explain_image, input_signature=[photo, target]),
        }

    def _named_outputs(self, outputs: tf.Tensor, pre_activations: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = tf.cast(outputs, tf.float32)
        pre_activations = tf.cast(pre_activations, tf.float32)
        if self.heads.kind == "regressor":
            columns = {"score": outputs, "rating": tf.cast(self.scores_layer.to_rating_scale(outputs), tf.float32)}
        else:
            columns = {"prob": outputs, "logit": pre_activations}
        return {key: columns[kind][:, i] for kind, keys in self.heads.keys.items() for i, key in enumerate(keys)}

    def _checked(self, image: tf.Tensor) -> tf.Tensor:
        # A stock TF Serving runs no request validation: refuse NaN pixels in the graph itself.
        return tf.debugging.check_numerics(image, "image contains NaN or infinite pixel values")

    def _predict(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs, pre_activations = self._both(self._checked(image), training=False)
        return self._named_outputs(outputs, pre_activations)

    def _explain_core(self, image: tf.Tensor, index: tf.Tensor) -> dict[str, tf.Tensor]:
        # One forward pass: the scores come from the same pre-activations the relevance graph explains.
        pre_activations, index, relevance = self.graph.explain(image, index)
        named = self._named_outputs(self.graph.outputs(pre_activations), pre_activations)
        named.update(target_index=index, target_score=tf.cast(tf.gather(pre_activations, index, batch_dims=1), tf.float32),
                     heatmap=tf.reduce_sum(tf.cast(relevance, tf.float32), axis=-1))
        return named

    def _decode_photos(self, photos: tf.Tensor) -> tf.Tensor:
        """Encoded JPEG/PNG/GIF/BMP photos `(N,)`, framed already, to model inputs: the 256 px frame's centre crop."""
        def decode(item):
            index, data = item
            magic = tf.strings.substr(data, 0, 4)
            known = tf.reduce_any(tf.stack([
                tf.strings.substr(magic, 0, 3) == b"\xff\xd8\xff", magic == b"\x89PNG",
                tf.strings.substr(magic, 0, 3) == b"GIF", tf.strings.substr(magic, 0, 2) == b"BM"]))
            check = tf.debugging.Assert(known, ["photo", index, "is not a JPEG, PNG, GIF or BMP image"])
            with tf.control_dependencies([check]):
                pixels = tf.io.decode_image(data, channels=3, expand_animations=False)
            # The client sends the 256 px frame; other sizes are resized to it (aspect not kept), as framing "none".
            frame = tf.image.resize(tf.cast(pixels, tf.float32), [FRAME_SIZE, FRAME_SIZE], antialias=True)
            offset = (FRAME_SIZE - 227) // 2
            return tf.clip_by_value(frame[offset:offset + 227, offset:offset + 227, :], 0.0, 255.0)

        count = tf.shape(photos)[0]
        return tf.map_fn(decode, (tf.range(count), photos), fn_output_signature=tf.TensorSpec((227, 227, 3), tf.float32))

    def _predict_image(self, photo: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._predict(self._decode_photos(photo))

    def _explain_image(self, photo: tf.Tensor, target: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._explain_with(self._core, self._decode_photos(photo), target)

    def _metadata_signature(self, request: tf.Tensor) -> dict[str, tf.Tensor]:
        # The export's psyattr.json, one copy per request row: clients learn the framing and outputs over the
        # serving protocol itself (TF Serving's metadata call only lists signatures).
        return {"psyattr_json": tf.fill(tf.shape(request), tf.constant(self.metadata_json))}

    def _target_indices(self, target: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
        """Output names, indices as text or "" (top output) to indices, -1 for the top output."""
        names = self._names
        matches = tf.equal(target[:, None], names[None, :])
        has_name = tf.reduce_any(matches, axis=1)
        by_name = tf.argmax(tf.cast(matches, tf.int32), axis=1, output_type=tf.int32)
        is_number = tf.strings.regex_full_match(target, "[0-9]{1,9}")
        number = tf.strings.to_number(tf.where(is_number, target, "0"), tf.int32)
        is_top = tf.equal(target, "")
        valid = has_name | is_top | (is_number & (number < tf.size(names)))
        checks = [
            tf.debugging.assert_equal(tf.shape(target)[0], count,
                                      message="image and target must hold the same number of images"),
            tf.debugging.Assert(tf.reduce_all(valid), [
                "unknown target: give an output name, its index, or \"\" for the top output; the outputs are",
                tf.strings.reduce_join(names, separator=", "), "got", tf.boolean_mask(target, ~valid)]),
        ]
        with tf.control_dependencies(checks):
            return tf.where(has_name, by_name, tf.where(is_top, -1, number))

    def _explain_with(self, core, image: tf.Tensor, target: tf.Tensor) -> dict[str, tf.Tensor]:
        image = self._checked(image)
        index = self._target_indices(target, tf.shape(image)[0])
        named = dict(core(image, index))
        named["target"] = tf.gather(self._names, named.pop("target_index"))
        return named

    def _explain(self, image: tf.Tensor, target: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._explain_with(self._core, image, target)

    def _explain_xla(self, image: tf.Tensor, target: tf.Tensor) -> dict[str, tf.Tensor]:
        # Target names are strings, which XLA cannot compile: only the relevance graph runs under XLA.
        return self._explain_with(self._core_xla, image, target)


def local_predictor(model: keras.Model) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """The `serving_default` signature run in process: images `(N, 227, 227, 3)` to the same named outputs."""
    builder = SignatureBuilder(model)
    function = builder.functions["serving_default"]
    order = [key for keys in builder.heads.keys.values() for key in keys]

    def predict(images: np.ndarray) -> dict[str, np.ndarray]:
        outputs = function(tf.constant(images, tf.float32))
        return {key: outputs[key].numpy() for key in order}

    return predict


def _warmup_records(builder: SignatureBuilder, name: str) -> list[bytes]:
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    # A mid-grey face-sized image: warmup only needs the shapes, and it must run under any model.
    image = tf.make_tensor_proto(np.full((1, 227, 227, 3), 127.5, np.float32))
    records = []
    # explain_xla is left out: a server without XLA would fail the warmup and refuse the whole version.
    photo = tf.make_tensor_proto(np.array([_grey_png()], dtype=object))
    for signature, inputs in (("serving_default", {"image": image}),
                              ("explain", {"image": image, "target": tf.make_tensor_proto(np.array([b""]))}),
                              ("explain_image", {"photo": photo, "target": tf.make_tensor_proto(np.array([b""]))})):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        request.model_spec.signature_name = signature
        for key, proto in inputs.items():
            request.inputs[key].CopyFrom(proto)
        log_record = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
        records.append(log_record.SerializeToString())
    return records


def _grey_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (FRAME_SIZE, FRAME_SIZE), (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_warmup(path: Path, records: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


def _metadata(builder: SignatureBuilder, name: str, version: int, source: str, framing: dict) -> dict:
    meta = {
        "format": 2,
        "model": name,
        "version": version,
        "source": source,
        "psyattr_version": __version__,
        "kind": builder.heads.kind,
        "outputs": builder.heads.output_names,
        "output_keys": builder.heads.keys,
        "composite": builder.composite,
        "signatures": list(SIGNATURES),
        "image": {"shape": [None, 227, 227, 3], "dtype": "float32", "pixels": "RGB 0..255"},
        "photo": {"shape": [None], "dtype": "string", "formats": ["JPEG", "PNG", "GIF", "BMP"],
                  "frame": [FRAME_SIZE, FRAME_SIZE], "signatures": ["predict_image", "explain_image"]},
        "framing": framing,
    }
    layer = builder.scores_layer
    if layer is not None:
        meta["scales"] = {n: [lo, hi] for n, lo, hi in zip(layer.output_names, layer.scale_low, layer.scale_high)}
    return meta


def read_export_metadata(version_dir: str | os.PathLike) -> dict | None:
    """The `assets.extra/psyattr.json` of an exported version, or None for exports of other tools."""
    path = Path(version_dir) / ASSETS_EXTRA / METADATA_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def export_model(
    model: keras.Model | str | os.PathLike,
    models_dir: str | os.PathLike,
    name: str,
    version: int | None = None,
    composite: str = DEFAULT_COMPOSITE,
    framing: str | None = FROM_MODEL,
) -> Path:
    """Write `models_dir/name/version/` (default version: latest + 1) and return it; never overwrites.

    `model` is a Keras model, a `.keras` file or a run folder. The version is written beside its
    final place and renamed into it, so that a server polling the folder never sees half a model.
    The export records the framing its photos need: the model's own unless `framing` names another.
    """
    from psyattr.models.loading import load_model

    if not MODEL_NAME.match(name):
        raise ExportError(f"model name {name!r} must start with a letter or digit and hold only letters, digits, "
                          "'_', '.' and '-' (e.g. psyattr_attractive)")
    if version is not None and (not isinstance(version, (int, np.integer)) or not 1 <= version <= MAX_VERSION):
        raise ExportError(f"version must be a whole number from 1 to {MAX_VERSION} (TF Serving's int64 versions), "
                          f"got {str(version)[:30]}")
    model_dir = Path(models_dir) / name
    version = int(version) if version is not None else (list_versions(model_dir) or [0])[-1] + 1
    final = model_dir / str(version)
    if final.exists():
        raise FileExistsError(f"{final} already exists: versions are never overwritten; export as another "
                              f"--version (next free: {(list_versions(model_dir) or [0])[-1] + 1})")
    source = str(model) if not isinstance(model, keras.Model) else model.name
    if not isinstance(model, keras.Model):
        model = load_model(model)
    try:
        framing_record = resolve_framing(framing, recorded_framing(model), f"model {source}").to_json()
    except ValueError as err:
        raise ExportError(str(err)) from None
    builder = SignatureBuilder(model, composite)
    meta = _metadata(builder, name, version, source, framing_record)
    builder.metadata_json = json.dumps(meta, sort_keys=True)

    archive = keras.export.ExportArchive()
    for signature, function in builder.functions.items():
        function.get_concrete_function()  # traced here, so that ExportArchive takes it as it is
        archive.add_endpoint(signature, function)

    model_dir.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(model_dir)
    # TF Serving only loads folders named by an integer: the hidden staging folder is invisible to it.
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.partial-", dir=model_dir))
    try:
        target = staging / "model"
        archive.write_out(str(target), verbose=False)
        _write_warmup(target / ASSETS_EXTRA / WARMUP_FILE, _warmup_records(builder, name))
        (target / ASSETS_EXTRA / METADATA_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        try:
            os.rename(target, final)  # refuses (ENOTEMPTY/EEXIST) if someone else wrote the version meanwhile
        except OSError as err:
            raise FileExistsError(f"{final} appeared while exporting; nothing was overwritten ({err})") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported %s version %d to %s (%s)", name, version, final, ", ".join(SIGNATURES))
    return final
