"""Which model versions are loaded: polling version folders, version policies, labels, rollover and lookup.

Like TF Serving, the manager polls every model's base path for integer version folders, loads the ones
its version policy wants (latest by default), runs their warmup records, and unloads a version only when
the versions replacing it are available. A version folder is loaded once its files have stayed unchanged
for one poll (a copy still in progress is left alone). A version that fails to load is skipped with a
log line, and retried only when its files change; unlike TF Serving, the policy then falls back to the
newest version that does load, so a corrupt newest version never leaves the model without one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from tensorflow_serving.apis import get_model_status_pb2, model_pb2

from psyattr.export import list_versions
from psyattr.serving.batching import Batcher
from psyattr.serving.config import (BatchingParameters, ConfigError, ModelEntry, discover_models,
                                    read_model_config)
from psyattr.serving.errors import ServingError, clip, invalid, not_found, status_code
from psyattr.serving.servable import LoadError, Servable
from psyattr.serving.validation import validate_request

log = logging.getLogger(__name__)

State = get_model_status_pb2.ModelVersionStatus.State


@dataclass
class VersionState:
    """A version's state as GetModelStatus reports it, with the error that ended it, if any."""

    state: int
    code: grpc.StatusCode = grpc.StatusCode.OK
    message: str = ""


@dataclass
class _Model:
    entry: ModelEntry
    loaded: dict[int, Servable] = field(default_factory=dict)
    states: dict[int, VersionState] = field(default_factory=dict)
    seen: dict[int, tuple] = field(default_factory=dict)  # fingerprints at the previous poll
    failed: dict[int, tuple] = field(default_factory=dict)  # fingerprints of versions that failed to load


def _fingerprint(path: Path) -> tuple:
    entries = []
    for root, _, files in os.walk(path):
        for name in files:
            try:
                stat = os.stat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            entries.append((os.path.relpath(os.path.join(root, name), path), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))


def _check_name(spec: model_pb2.ModelSpec) -> None:
    # TF Serving's ServerCore refuses a nameless spec before any lookup; its GetModelStatus answers NOT_FOUND
    # for one instead, which says less: status refuses it here too.
    if not spec.name:
        raise invalid("ModelSpec has no name specified.")


class ModelManager:
    """Loads, serves and unloads model versions from `models_dir` (or a TF Serving model config file)."""

    def __init__(self, models_dir: str | os.PathLike, config_path: str | os.PathLike | None = None,
                 batching: BatchingParameters | None = None, poll_seconds: float = 1.0, warmup: bool = True,
                 xla_enabled: bool = True):
        self.models_dir = Path(models_dir)
        self.config_path = Path(config_path) if config_path else None
        self.batching = batching or BatchingParameters()
        self.poll_seconds = poll_seconds
        self.warmup = warmup
        self.xla_enabled = xla_enabled
        self._models: dict[str, _Model] = {}
        self._batchers: dict[tuple[str, int, str], Batcher] = {}
        self._lock = threading.RLock()
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._config_mtime: int | None = None
        self._entries: list[ModelEntry] = []

    # ---- polling -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Load what the models folder holds now, then keep polling it in the background."""
        self._entries = self._read_entries(initial=True)
        self.poll(initial=True)
        self._thread = threading.Thread(target=self._poll_loop, name="version-poller", daemon=True)
        self._thread.start()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll()
            except Exception:  # a poll must never end the poller
                log.exception("polling %s failed", self.models_dir)

    def _read_entries(self, initial: bool = False) -> list[ModelEntry]:
        if self.config_path is None:
            return discover_models(self.models_dir)
        mtime = self.config_path.stat().st_mtime_ns
        if mtime == self._config_mtime:
            return self._entries
        try:
            entries = read_model_config(self.config_path, self.models_dir)
        except ConfigError:
            if initial:
                raise
            log.exception("keeping the previous model config")
            return self._entries
        if not initial:
            log.info("model config %s changed: serving %s", self.config_path, ", ".join(e.name for e in entries))
        self._config_mtime = mtime
        return entries

    def poll(self, initial: bool = False) -> None:
        """One pass over every model: load new aspired versions, then unload replaced ones."""
        with self._poll_lock:
            try:
                self._entries = self._read_entries()
            except (ConfigError, OSError) as err:
                log.warning("cannot read the model list: %s", err)
            names = {entry.name for entry in self._entries}
            for entry in self._entries:
                with self._lock:
                    model = self._models.setdefault(entry.name, _Model(entry))
                    model.entry = entry
                self._poll_model(model, initial)
            for name in [n for n in self._models if n not in names]:
                log.info("model %s is no longer configured: unloading it", name)
                for version in list(self._models[name].loaded):
                    self._unload(self._models[name], version)
                with self._lock:
                    del self._models[name]

    def _poll_model(self, model: _Model, initial: bool) -> None:
        entry = model.entry
        available = list_versions(entry.base_path)
        if not available and initial:
            log.warning("no versions of %s found under %s (waiting for one)", entry.name, entry.base_path)
        prints = {v: _fingerprint(entry.base_path / str(v)) for v in available}
        candidates = [v for v in available if model.failed.get(v) != prints[v]]
        # Folders still changing since the last poll are being copied: load them on a later poll.
        settled = {v for v in candidates if initial or model.seen.get(v) == prints[v] or v in model.loaded}
        model.seen = prints
        while True:  # a version that fails drops out, and the policy picks again among the rest
            candidates = [v for v in available if model.failed.get(v) != prints[v]]
            wanted = [v for v in sorted(entry.aspired(candidates), reverse=True)
                      if v not in model.loaded and v in settled]
            results = [self._load(model, version, prints[version]) for version in wanted]
            if all(results):
                break
        candidates = [v for v in available if model.failed.get(v) != prints[v]]
        aspired = set(entry.aspired(candidates))
        if all(v in model.loaded for v in aspired):  # only unload once every replacement is available
            for version in sorted(set(model.loaded) - aspired):
                self._unload(model, version)

    def _load(self, model: _Model, version: int, fingerprint: tuple) -> bool:
        name, path = model.entry.name, model.entry.base_path / str(version)
        with self._lock:
            model.states[version] = VersionState(State.LOADING)
        start = time.monotonic()
        try:
            servable = Servable(name, version, path, self.xla_enabled)
            try:
                warmed = servable.warmup(validate_request) if self.warmup else 0
            except BaseException:
                servable.close()
                raise
        except LoadError as err:
            cause = err.__cause__
            code = (cause.code if isinstance(cause, ServingError) else
                    status_code(cause.error_code) if hasattr(cause, "error_code") else grpc.StatusCode.UNKNOWN)
            with self._lock:
                model.failed[version] = fingerprint
                model.states[version] = VersionState(State.END, code, str(err))
            serving = sorted(model.loaded)
            log.warning("skipped %s version %d: %s; %s", name, version, err,
                        f"version {', '.join(map(str, serving))} keeps serving" if serving
                        else f"no version of {name} serving yet")
            return False
        with self._lock:
            model.loaded[version] = servable
            model.failed.pop(version, None)
            model.states[version] = VersionState(State.AVAILABLE)
        log.info("loaded %s version %d from %s in %.1f s (%d warmup requests)", name, version, path,
                 time.monotonic() - start, warmed)
        return True

    def _unload(self, model: _Model, version: int) -> None:
        name = model.entry.name
        with self._lock:
            servable = model.loaded.pop(version, None)
            if servable is None:
                return
            model.states[version] = VersionState(State.UNLOADING)
            batchers = [self._batchers.pop(key) for key in list(self._batchers) if key[:2] == (name, version)]
        for batcher in batchers:
            batcher.close()  # runs what is queued; nothing else can reach the Session afterwards
        servable.close()
        with self._lock:
            model.states[version] = VersionState(State.END)
        log.info("unloaded %s version %d", name, version)

    def stop(self) -> None:
        """Stop polling and unload every version (queued requests are answered first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._poll_lock:
            for model in list(self._models.values()):
                for version in list(model.loaded):
                    self._unload(model, version)

    # ---- lookup --------------------------------------------------------------------------------------

    def servable(self, spec: model_pb2.ModelSpec) -> Servable:
        """The version a request's ModelSpec asks for (latest, a number or a label), with TF Serving's errors."""
        _check_name(spec)
        with self._lock:
            model = self._models.get(spec.name)
            if spec.HasField("version"):
                version = spec.version.value
            elif spec.version_label:
                labels = model.entry.labels if model else {}
                if spec.version_label not in labels:
                    raise invalid(f"Unrecognized servable version label: {clip(spec.version_label)}")
                version = labels[spec.version_label]
            else:
                if model is None or not model.loaded:
                    raise not_found(f"Servable not found for request: Latest({clip(spec.name)})")
                version = max(model.loaded)
            servable = model.loaded.get(version) if model else None
            if servable is None:
                raise not_found(f"Servable not found for request: Specific({clip(spec.name)}, {version})")
            return servable

    def batcher(self, servable: Servable, signature: str) -> Batcher:
        """The batch queue of one signature of a loaded version."""
        key = (servable.name, servable.version, signature)
        with self._lock:
            model = self._models.get(servable.name)
            if model is None or model.loaded.get(servable.version) is not servable:
                raise ServingError(grpc.StatusCode.UNAVAILABLE,
                                   f"{servable.name} version {servable.version} was unloaded: retry the request")
            if key not in self._batchers:
                self._batchers[key] = Batcher(lambda feeds: servable.run(signature, feeds), self.batching,
                                              f"{servable.name}-{servable.version}-{signature}")
            return self._batchers[key]

    def status(self, spec: model_pb2.ModelSpec) -> list[tuple[int, VersionState]]:
        """Version states for GetModelStatus, with TF Serving's NOT_FOUND messages."""
        _check_name(spec)
        with self._lock:
            model = self._models.get(spec.name)
            states = dict(model.states) if model else {}
        if spec.HasField("version"):
            version = spec.version.value
            if version not in states:
                raise not_found(f"Could not find version {version} of model {clip(spec.name)}")
            return [(version, states[version])]
        if spec.version_label:
            labels = model.entry.labels if model else {}
            if spec.version_label not in labels or labels[spec.version_label] not in states:
                raise invalid(f"Unrecognized servable version label: {clip(spec.version_label)}")
            version = labels[spec.version_label]
            return [(version, states[version])]
        if not states:
            raise not_found(f"Could not find any versions of model {clip(spec.name)}")
        return sorted(states.items())

    def model_names(self) -> list[str]:
        """The names of the configured models."""
        return [entry.name for entry in self._entries]

    def batch_sizes(self) -> dict[str, Counter[int]]:
        """How many batches of each size (in requests) ran, by `model/version/signature`, for loaded versions."""
        with self._lock:
            return {"/".join(map(str, key)): Counter(batcher.batch_sizes) for key, batcher in self._batchers.items()}
