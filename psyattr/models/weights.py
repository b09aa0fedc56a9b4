"""Weight files for the base nets: shipped presets (float16 `.npz`, hash-checked) and user files."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import keras
import numpy as np

PRESET_DIR = Path(__file__).parent / "presets"
PRESET_INDEX = PRESET_DIR / "presets.json"


class WeightsError(ValueError):
    """Weights that cannot be loaded into a model (unknown preset, bad file, wrong shapes)."""


def available_presets() -> dict[str, dict]:
    """The shipped presets: {name: {task: {"file", "sha256", ...}}}."""
    if not PRESET_INDEX.exists():
        return {}
    return json.loads(PRESET_INDEX.read_text(encoding="utf-8"))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_npz_weights(model: keras.Model, path: str | os.PathLike, dtype: str = "float16") -> str:
    """Save every weighted layer as `<layer>/<index>` arrays in a compressed `.npz`; return its SHA-256."""
    arrays = {f"{layer.name}/{i}": np.asarray(w, dtype=dtype) for layer in model.layers
              for i, w in enumerate(layer.get_weights())}
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return sha256_file(path)


def randomize_weights(model: keras.Model, seed: int = 0, zero_bias: bool = False) -> keras.Model:
    """Give every weighted layer Gaussian weights of std 1.2 / sqrt(fan-in) (biases 0, or N(0.1, 0.3)).

    Activations then keep a useful size through the whole net at pixel-scale input: for benchmarks and
    tests that need a net which is neither trained nor degenerate.
    """
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.weights:
            kernel = layer.get_weights()[0]
            fan_in = int(np.prod(kernel.shape[:-1]))
            bias = np.zeros(kernel.shape[-1]) if zero_bias else rng.normal(0.1, 0.3, kernel.shape[-1])
            layer.set_weights([rng.normal(0, 1.2 / np.sqrt(fan_in), kernel.shape).astype("float32"),
                               bias.astype("float32")])
    return model


def _arrays_from_npz(path: Path) -> dict[str, list[np.ndarray]]:
    try:
        with np.load(path) as data:
            flat = {key: data[key] for key in data.files}
    except (OSError, ValueError) as err:
        raise WeightsError(f"cannot read weights file {path}: {err}") from err
    layers: dict[str, list[np.ndarray]] = {}
    for key in sorted(flat, key=lambda k: (k.rsplit("/", 1)[0], int(k.rsplit("/", 1)[1]))):
        layers.setdefault(key.rsplit("/", 1)[0], []).append(flat[key])
    return layers


def _arrays_from_keras(path: Path) -> dict[str, list[np.ndarray]]:
    try:
        source = keras.models.load_model(path, compile=False)
    except Exception as err:  # Keras raises many kinds for a bad archive
        raise WeightsError(f"cannot load Keras model {path}: {err}") from err
    return {layer.name: layer.get_weights() for layer in source.layers if layer.weights}


def preset_arrays(name: str, task: str) -> dict[str, list[np.ndarray]]:
    """Load a shipped preset's arrays after checking the file against its recorded hash."""
    presets = available_presets()
    if name not in presets or task not in presets[name]:
        known = [f"{p} ({', '.join(sorted(t))})" for p, t in presets.items()]
        raise WeightsError(
            f"no preset {name!r} for the {task} net; shipped presets: {', '.join(known) or 'none'}; "
            "or pass a weights file (.keras, .weights.h5, .npz)"
        )
    entry = presets[name][task]
    path = PRESET_DIR / entry["file"]
    if not path.exists():
        raise WeightsError(f"preset file {path} is missing from the installed package: reinstall psyattr")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise WeightsError(f"preset file {path} is damaged: SHA-256 {digest[:12]}..., expected "
                           f"{entry['sha256'][:12]}...; reinstall psyattr")
    return _arrays_from_npz(path)


def assign_weights(model: keras.Model, arrays: Mapping[str, list[np.ndarray]], source: str,
                   skip_missing: tuple[str, ...] = ()) -> None:
    """Check every weighted layer's shapes against `arrays`, then assign them all (none if any check fails)."""
    plan = []
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in arrays:
            if layer.name in skip_missing:
                continue
            raise WeightsError(f"{source} has no weights for layer {layer.name!r} (it has: {', '.join(arrays)})")
        found = arrays[layer.name]
        expected = [tuple(w.shape) for w in layer.weights]
        if [tuple(np.shape(a)) for a in found] != expected:
            raise WeightsError(
                f"layer {layer.name!r}: {source} has shapes {[tuple(np.shape(a)) for a in found]}, "
                f"{model.name} expects {expected}"
            )
        plan.append((layer, found))
    for layer, found in plan:
        layer.set_weights([np.asarray(a, dtype=w.dtype) for a, w in zip(found, layer.weights)])


def recorded_framing(model: keras.Model) -> dict | None:
    """The framing a model records (its preprocessing layer's, nested models searched too), or None."""
    for layer in model.layers:
        framing = getattr(layer, "framing", None)
        if isinstance(framing, dict):
            return dict(framing)
        if isinstance(layer, keras.Model):
            inner = recorded_framing(layer)
            if inner is not None:
                return inner
    return None


def weights_framing(weights: str | os.PathLike, task: str) -> dict | None:
    """The framing that a preset or a `.keras` file of weights was trained on, when it says."""
    path = Path(weights)
    if isinstance(weights, str) and not path.suffix and not path.exists():
        entry = available_presets().get(weights, {}).get(task, {})
        return entry.get("framing")
    if path.suffix == ".keras" and path.exists():
        try:
            return recorded_framing(keras.models.load_model(path, compile=False))
        except Exception:  # an unreadable file is reported when its weights are loaded
            return None
    return None


def load_weights_into(model: keras.Model, weights: str | os.PathLike, task: str) -> None:
    """Fill `model` from a preset name or a `.keras` / `.weights.h5` / `.npz` file, all layers or none."""
    path = Path(weights)
    if isinstance(weights, str) and not path.suffix and not path.exists():
        assign_weights(model, preset_arrays(weights, task), f"preset {weights!r}")
        return
    if not path.exists():
        raise WeightsError(f"weights file not found: {path} (shipped presets: {', '.join(available_presets()) or 'none'})")
    if path.suffix == ".npz":
        arrays = _arrays_from_npz(path)
    elif path.suffix == ".keras":
        arrays = _arrays_from_keras(path)
    elif path.name.endswith(".h5"):
        # Load into a twin first, so that a file that fails half way leaves `model` untouched.
        twin = keras.models.clone_model(model)
        try:
            twin.load_weights(path)
        except Exception as err:
            raise WeightsError(f"cannot load weights {path} into {model.name}: {err}") from err
        arrays = {layer.name: layer.get_weights() for layer in twin.layers if layer.weights}
    else:
        raise WeightsError(f"unknown weights file type {path.name!r}: expected .keras, .weights.h5 or .npz")
    assign_weights(model, arrays, str(path))
