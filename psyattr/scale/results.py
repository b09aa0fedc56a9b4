"""A batch job's results: a Parquet dataset of one row per image, written part by part so that a rerun resumes.

The folder holds `part-<digest>.parquet` files (one per batch of images, named by the images it holds, each
written under a hidden name and then renamed, so a crash never leaves half a part) and `_psyattr.json`, the job
that wrote them. Readers of Parquet datasets (pyarrow, pandas, Ray, Spark, DuckDB) skip both hidden and `_`
files, so `pandas.read_parquet(folder)` reads the rows. Columns: `path`, `error` (null when the image was
scored), `framing`, `framing_notes`, one float32 column per named output (`expected_age` for an age net), and
for explanations `target`, `target_index`, `score`, `relevance_sum`, `heatmap` and `heatmap_scale`: the
relevance per pixel of the 227 x 227 model input, divided by its largest magnitude (`heatmap_scale`) and stored
as a fixed-size list of float16 (row-major), so that small relevance keeps three significant digits;
`heatmaps(table)` gives the relevance back as float32 `(N, 227, 227)`.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

MANIFEST = "_psyattr.json"
HEATMAP_SHAPE = (227, 227)
FIXED_COLUMNS = ("path", "error", "framing", "framing_notes", "target", "target_index", "score", "relevance_sum",
                 "heatmap", "heatmap_scale", "expected_age")


class ResultsError(ValueError):
    """A results folder that cannot be used as asked: another job's, or damaged."""


def _fs(out: str | os.PathLike):
    import pyarrow.fs

    out = str(out)
    if "://" in out:
        return pyarrow.fs.FileSystem.from_uri(out)
    return pyarrow.fs.LocalFileSystem(), str(Path(out).absolute())


def output_columns(names: Sequence[str]) -> dict[str, str]:
    """The column for each named output: the name itself unless a fixed column has it (then `output_<name>`)."""
    return {name: f"output_{name}" if name in FIXED_COLUMNS else name for name in names}


def schema(mode: str, output_names: Sequence[str], job: dict):
    """The Arrow schema of a job's parts: the fixed columns, a float32 column per output, the job as metadata."""
    import pyarrow as pa

    fields = [pa.field("path", pa.string(), nullable=False), pa.field("error", pa.string()),
              pa.field("framing", pa.string()), pa.field("framing_notes", pa.list_(pa.string()))]
    fields += [pa.field(column, pa.float32()) for column in output_columns(output_names).values()]
    if mode == "predict":
        fields.append(pa.field("expected_age", pa.float32()))
    else:
        fields += [pa.field("target", pa.string()), pa.field("target_index", pa.int32()),
                   pa.field("score", pa.float32()), pa.field("relevance_sum", pa.float32()),
                   pa.field("heatmap", pa.list_(pa.float16(), HEATMAP_SHAPE[0] * HEATMAP_SHAPE[1])),
                   pa.field("heatmap_scale", pa.float32())]
    return pa.schema(fields, metadata={"psyattr.job": json.dumps(job, sort_keys=True),
                                       "psyattr.heatmap_shape": json.dumps(list(HEATMAP_SHAPE))})


def part_name(paths: Sequence[str]) -> str:
    """A part's file name from the images it holds: a retried batch rewrites its own part, never a second copy."""
    digest = hashlib.sha1("\n".join(paths).encode()).hexdigest()[:20]
    return f"part-{digest}.parquet"


def write_part(out: str | os.PathLike, rows: list[dict], table_schema) -> str:
    """Write rows as one part of the dataset at `out`, atomically (a hidden file renamed into place)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, root = _fs(out)
    name = part_name([row["path"] for row in rows])
    staging = f"{root}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
    table = pa.Table.from_pylist(rows, schema=table_schema)
    pq.write_table(table, staging, filesystem=fs)
    fs.move(staging, f"{root}/{name}")
    return name


def read_part(out: str | os.PathLike, paths: Sequence[str]):
    """The `path` and `error` columns of the part holding exactly `paths`, or None when it is not written yet."""
    import pyarrow.fs
    import pyarrow.parquet as pq

    fs, root = _fs(out)
    part = f"{root}/{part_name(paths)}"
    if fs.get_file_info(part).type != pyarrow.fs.FileType.File:
        return None
    return pq.read_table(part, columns=["path", "error"], filesystem=fs)


def _manifest_path(out: str | os.PathLike) -> tuple:
    fs, root = _fs(out)
    return fs, f"{root}/{MANIFEST}"


def open_results(out: str | os.PathLike, job: dict) -> set[str]:
    """Make `out` ready for `job` and return the paths it holds results for already (a rerun skips them).

    Refused when `out` holds results of a different job (another model, target, method or framing): the
    rows would mix, silently.
    """
    import pyarrow.fs

    fs, manifest = _manifest_path(out)
    root = manifest.rsplit("/", 1)[0]
    fs.create_dir(root, recursive=True)
    info = fs.get_file_info(manifest)
    if info.type == pyarrow.fs.FileType.File:
        with fs.open_input_stream(manifest) as stream:
            recorded = json.loads(stream.read().decode())
        if recorded != job:
            changed = sorted(k for k in set(recorded) | set(job) if recorded.get(k) != job.get(k))
            details = "; ".join(f"{k}: {recorded.get(k)!r} there, {job.get(k)!r} now" for k in changed)
            raise ResultsError(f"{out} holds results of another job ({details}): give another --out, or remove it "
                               "to start over")
    else:
        leftovers = [f for f in fs.get_file_info(pyarrow.fs.FileSelector(root)) if f.base_name.startswith("part-")]
        if leftovers:
            raise ResultsError(f"{out} holds {len(leftovers)} result part(s) but no {MANIFEST}: it was not written "
                               "by psyattr, or was damaged; give another --out")
        with fs.open_output_stream(manifest + ".tmp") as stream:
            stream.write(json.dumps(job, indent=2, sort_keys=True).encode())
        fs.move(manifest + ".tmp", manifest)
    return done_paths(out)


def _parts(out: str | os.PathLike) -> list[str]:
    import pyarrow.fs

    fs, root = _fs(out)
    return sorted(f.path for f in fs.get_file_info(pyarrow.fs.FileSelector(root))
                  if f.base_name.startswith("part-") and f.base_name.endswith(".parquet"))


def done_paths(out: str | os.PathLike) -> set[str]:
    """The images that `out` holds a row for, scored or failed."""
    import pyarrow.parquet as pq

    fs, _ = _fs(out)
    done: set[str] = set()
    for part in _parts(out):
        try:
            done.update(pq.read_table(part, columns=["path"], filesystem=fs).column("path").to_pylist())
        except Exception as err:  # pyarrow raises several kinds for a damaged file
            raise ResultsError(f"cannot read {part}: {err}; remove it and rerun to redo its images") from err
    return done


def read_results(out: str | os.PathLike, columns: Sequence[str] | None = None):
    """The results at `out` as one Arrow table (every part, in no set order)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, _ = _fs(out)
    parts = _parts(out)
    if not parts:
        raise ResultsError(f"{out} holds no results")
    return pa.concat_tables([pq.read_table(p, columns=list(columns) if columns else None, filesystem=fs)
                             for p in parts])


def pack_heatmap(heat: np.ndarray) -> tuple[np.ndarray, float]:
    """A heatmap as stored: float16 values in -1..1 and the float32 scale that gives the relevance back."""
    heat = np.asarray(heat, np.float32)
    scale = float(np.abs(heat).max())
    return (heat / scale if scale > 0 else heat).astype(np.float16).ravel(), scale


def heatmaps(table) -> np.ndarray:
    """The relevance per pixel of each row, float32 `(N, 227, 227)`; NaN for rows without one (failed images)."""
    column = table.column("heatmap").combine_chunks()
    out = np.full((len(column), *HEATMAP_SHAPE), np.nan, np.float32)
    valid = np.asarray(column.is_valid())
    if valid.any():
        values = np.asarray(column.filter(column.is_valid()).flatten(), np.float16).reshape(-1, *HEATMAP_SHAPE)
        scales = np.asarray(table.column("heatmap_scale").to_numpy(zero_copy_only=False), np.float32)[valid]
        out[valid] = values.astype(np.float32) * scales[:, None, None]
    return out
