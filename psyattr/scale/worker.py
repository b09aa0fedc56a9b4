"""One worker of a batch job: the model loaded once, photos framed, scored or explained, and written as a part.

Ray's actors are `BatchWorker`s; the same class runs in process without Ray, so both engines share every step
from the photo to the Parquet row.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from psyattr.scale import results

EXPLAIN, PREDICT = "explain", "predict"


@dataclasses.dataclass(frozen=True)
class BatchJob:
    """What every worker of a job needs: the model, what to do, how to frame, where to write. Picklable."""

    mode: str
    model: str
    out: str
    framing: str | None = None
    target: str | None = None
    composite: str = "alpha2beta1"
    jit: bool = True
    max_pixels: int | None = None
    threads: int = 1

    def record(self) -> dict:
        """What `_psyattr.json` records of the job: a rerun into the same folder must ask the same."""
        record = {"mode": self.mode, "model": self.model, "framing": self.framing or "model"}
        if self.mode == EXPLAIN:
            record.update(target=self.target, composite=self.composite)
        return record


def export_version_dir(spec: str) -> Path | None:
    """The SavedModel folder that `spec` names (a version folder, or a model folder's latest version), or None."""
    from psyattr.export import list_versions

    path = Path(spec)
    if (path / "saved_model.pb").exists():
        return path
    versions = list_versions(path)
    return path / str(versions[-1]) if versions else None


@dataclasses.dataclass
class LoadedModel:
    """A model ready for a batch job: its framing record, output names, and the predict and explain calls."""

    framing: dict | None
    output_names: list[str]
    predict: Callable[[np.ndarray], dict[str, np.ndarray]] | None  # None where the job explains
    explain: Callable[[np.ndarray, str | None], object] | None  # None where the job predicts
    name: str


def _load_keras(job: BatchJob) -> LoadedModel:
    from psyattr.export import SignatureBuilder, local_predictor
    from psyattr.lrp import LRPExplainer
    from psyattr.models.loading import load_model
    from psyattr.models.weights import recorded_framing

    model = load_model(job.model)
    # Each mode builds only what it calls: actors start once per job, and the signatures cost time to build.
    if job.mode == EXPLAIN:
        explainer = LRPExplainer(model, job.composite, jit_compile=job.jit)
        return LoadedModel(recorded_framing(model), list(explainer.output_names), None, explainer, explainer.name)
    keys = [key for keys in SignatureBuilder(model).heads.keys.values() for key in keys]
    return LoadedModel(recorded_framing(model), keys, local_predictor(model), None, "serving_default")


def _load_export(job: BatchJob, version_dir: Path) -> LoadedModel:
    import tensorflow as tf

    from psyattr.explanation import from_signature
    from psyattr.export import read_export_metadata
    from psyattr.models.outputs import TOP, target_indices

    metadata = read_export_metadata(version_dir) or {}
    names = list(metadata.get("outputs") or [])
    keys = [key for group in (metadata.get("output_keys") or {}).values() for key in group]
    loaded = tf.saved_model.load(str(version_dir))
    wanted = "explain" if job.mode == EXPLAIN else "serving_default"
    if wanted not in loaded.signatures:
        raise ValueError(f"the export {version_dir} has no {wanted!r} signature (it has "
                         f"{', '.join(loaded.signatures) or 'none'}): export it with psyattr export")
    signature = loaded.signatures[wanted]

    def predict(images: np.ndarray) -> dict[str, np.ndarray]:
        answer = {k: v.numpy() for k, v in signature(image=tf.constant(images, tf.float32)).items()}
        return {key: answer[key] for key in [*[k for k in keys if k in answer], *sorted(set(answer) - set(keys))]}

    def explain(images: np.ndarray, target: str | None):
        indices = target_indices(names, target, len(images), f"export {version_dir}")
        targets = tf.constant([b"" if i == TOP else names[i].encode() for i in indices])
        answer = signature(image=tf.constant(images, tf.float32), target=targets)
        return from_signature({k: v.numpy() for k, v in answer.items()}, names)

    loaded_model = LoadedModel(metadata.get("framing"), names if job.mode == EXPLAIN else keys, predict, explain,
                               f"{version_dir.parent.name}/{version_dir.name} explain")
    loaded_model.keep_alive = loaded  # the signatures' variables live as long as the loaded object
    return loaded_model


def load_for_job(job: BatchJob) -> LoadedModel:
    """The model a job names: a run folder, a `.keras` file, a base net, or an exported SavedModel folder."""
    version_dir = export_version_dir(job.model) if not job.model.endswith(".keras") else None
    return _load_export(job, version_dir) if version_dir is not None else _load_keras(job)


def check_target(model: LoadedModel, target: str | None, what: str) -> None:
    """Fail now, naming the outputs, when `target` is not one of the model's."""
    from psyattr.models.outputs import target_indices

    if target is not None:
        target_indices(model.output_names, target, 1, what)


class BatchWorker:
    """Holds the model once; each call frames a batch of photos, runs it, writes a part, and returns path/error.

    Called by Ray Data with rows `{"paths": [photo, ...]}`; returns `{"path", "error"}` for the driver's tally.
    """

    def __init__(self, job: BatchJob):
        import tensorflow as tf

        try:
            # Actors share a machine's cores: each keeps to its own share rather than all of them.
            tf.config.threading.set_intra_op_parallelism_threads(job.threads)
            tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, job.threads)))
        except RuntimeError:
            pass  # TensorFlow was started already in this process (the local engine): its threads stay
        if job.max_pixels is not None:
            from PIL import Image

            from psyattr.data.images import MAX_PIXELS_ENV

            os.environ[MAX_PIXELS_ENV] = str(job.max_pixels)
            Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, job.max_pixels)
        from psyattr.faces.framing import FROM_MODEL, resolve_framing

        self.job = job
        self.model = load_for_job(job)
        self.framing = resolve_framing(job.framing or FROM_MODEL, self.model.framing, f"model {job.model}")
        self.columns: dict[str, str] | None = None
        self.schema = None

    def _learn_columns(self, outputs: dict | None) -> None:
        """The output columns are what the model answers (a Keras model's names, an export's signature keys)."""
        if outputs is None:  # a batch of failures only: one grey image asks the model
            probe = np.full((1, 227, 227, 3), 128.0, np.float32)
            outputs = self.model.predict(probe) if self.job.mode == PREDICT else self.model.explain(probe, None).outputs
        self.columns = results.output_columns(list(outputs))
        self.schema = results.schema(self.job.mode, list(outputs), self.job.record())

    def _frame(self, path: str):
        from psyattr.data.images import decode_rgb
        from psyattr.faces.framing import frame_image
        from psyattr.scale.inputs import read_input

        source = read_input(path)
        return frame_image(decode_rgb(source, name=path) if isinstance(source, bytes) else decode_rgb(source),
                           self.framing, source=path)

    def rows(self, paths: list[str]) -> list[dict]:
        """One result row per path, in order: the outputs (and heatmap), or the error that stopped it."""
        from psyattr.data.images import ImageError
        from psyattr.predict import expected_age

        rows, faces, kept = [], [], []
        for path in paths:
            row = {"path": path, "error": None, "framing": self.framing.name, "framing_notes": None}
            try:
                face = self._frame(path)
                faces.append(face)
                kept.append(row)
                row["framing_notes"] = list(face.notes) or None
            except ImageError as err:
                row["error"] = str(err)
            except OSError as err:  # a file that went, a folder, a filesystem that does not answer
                row["error"] = f"cannot read {path}: {err.strerror or err}"
            rows.append(row)
        if faces:
            images = np.stack([face.model_input() for face in faces])
            if self.job.mode == PREDICT:
                outputs = self.model.predict(images)
                if self.columns is None:
                    self._learn_columns(outputs)
                for i, row in enumerate(kept):
                    values = {key: float(value[i]) for key, value in outputs.items()}
                    row.update({self.columns[k]: v for k, v in values.items() if k in self.columns})
                    row["expected_age"] = expected_age(values)
            else:
                explanation = self.model.explain(images, self.job.target)
                if self.columns is None:
                    self._learn_columns(explanation.outputs)
                heats = explanation.heatmap
                for i, row in enumerate(kept):
                    record = explanation.row(i)
                    row.update({self.columns[k]: v for k, v in record["outputs"].items() if k in self.columns})
                    heat, scale = results.pack_heatmap(heats[i])
                    row.update(target=record["target"], target_index=record["target_index"], score=record["score"],
                               relevance_sum=record["relevance_sum"], heatmap=heat, heatmap_scale=scale)
        if self.columns is None:
            self._learn_columns(None)
        return rows

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ray Data's call: rows of `paths` (each a batch of photos) in; a part written; `path`/`error` out."""
        paths = [str(p) for chunk in batch["paths"] for p in chunk]
        # Ray reruns a whole task when its actor dies, and a task may hold batches whose parts are written
        # already: those are read back, not computed and written again.
        written = results.read_part(self.job.out, paths)
        if written is not None:
            errors = written.column("error").to_pylist()
            return {"path": np.array(written.column("path").to_pylist(), dtype=object),
                    "error": np.array([error or "" for error in errors], dtype=object)}
        rows = self.rows(paths)
        results.write_part(self.job.out, rows, self.schema)
        return {"path": np.array(paths, dtype=object),
                "error": np.array([row["error"] or "" for row in rows], dtype=object)}

