"""What a batch job reads: image files named by folders, glob patterns, URIs or a Parquet/CSV list of paths."""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Sequence
from pathlib import Path

from psyattr.data.images import IMAGE_SUFFIXES

LIST_SUFFIXES = (".parquet", ".csv")
PATH_COLUMNS = ("path", "image", "file")


def is_uri(spec: str) -> bool:
    """Whether `spec` names a file by a filesystem URI (`s3://...`, `gs://...`, `file:///...`), not a local path."""
    return "://" in spec


def _filesystem(uri: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(uri)


def _list_uri(uri: str) -> list[str]:
    import pyarrow.fs

    fs, root = _filesystem(uri)
    info = fs.get_file_info(root)
    if info.type == pyarrow.fs.FileType.NotFound:
        raise FileNotFoundError(f"no such image or folder: {uri}")
    if info.type == pyarrow.fs.FileType.File:
        return [uri]
    scheme = uri.split("://", 1)[0]
    found = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=False))
    return sorted(f"{scheme}://{f.path}" for f in found
                  if f.type == pyarrow.fs.FileType.File and Path(f.path).suffix.lower() in IMAGE_SUFFIXES)


def _read_list(path: str) -> list[str]:
    """The paths in a Parquet or CSV list: its `path` (or `image`, `file`) column, relative ones beside the list."""
    if path.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(path) if not is_uri(path) else pq.read_table(path.split("://", 1)[1],
                                                                             filesystem=_filesystem(path)[0])
        columns = table.column_names
        rows = None
    else:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
        columns = list(rows[0]) if rows else []
    column = next((c for c in PATH_COLUMNS if c in columns), None)
    if column is None:
        raise ValueError(f"{path}: a list of images needs a column named {' or '.join(PATH_COLUMNS)}; it has "
                         f"{', '.join(columns) or 'none'}")
    values = [str(v) for v in (table.column(column).to_pylist() if rows is None else (r[column] for r in rows))
              if v not in (None, "")]
    base = Path(path).parent
    return [v if is_uri(v) or Path(v).is_absolute() else str(base / v) for v in values]


def list_inputs(specs: Sequence[str | os.PathLike]) -> list[str]:
    """Expand folders (not recursive), glob patterns, URIs and Parquet/CSV lists into image paths, in order, once each.

    Local paths stay as given (as `psyattr predict`'s local engine writes them), so both engines name an image alike.
    """
    found: list[str] = []
    for spec in map(str, specs):
        if spec.lower().endswith(LIST_SUFFIXES) and (is_uri(spec) or Path(spec).is_file()):
            found.extend(_read_list(spec))
        elif is_uri(spec):
            found.extend(_list_uri(spec))
        elif Path(spec).is_dir():
            found.extend(str(p) for p in sorted(Path(spec).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES)
        elif Path(spec).exists():
            found.append(str(Path(spec)))
        elif glob.has_magic(spec):
            matches = sorted(glob.glob(spec))
            if not matches:
                raise FileNotFoundError(f"no file matches {spec}")
            found.extend(str(Path(m)) for m in matches if Path(m).is_file())
        else:
            raise FileNotFoundError(f"no such image or folder: {spec}")
    return list(dict.fromkeys(found))


def read_input(spec: str) -> bytes | Path:
    """An image's bytes from its filesystem (for URIs) or its local path, ready for `decode_rgb`."""
    if not is_uri(spec):
        return Path(spec)
    fs, path = _filesystem(spec)
    with fs.open_input_stream(path) as stream:
        return stream.read()
