"""Dispatch `format:PATH` data arguments to the readers of labelled faces."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from psyattr.data.adience import read_adience
from psyattr.data.labels import FaceRecord
from psyattr.data.utkface import read_utkface

LABELLED_READERS = {"utkface": read_utkface, "adience": read_adience}


def read_labelled_faces(sources: Iterable[tuple[str, Path]]) -> list[FaceRecord]:
    """Read and concatenate age/gender-labelled faces from (format, path) pairs."""
    records: list[FaceRecord] = []
    for kind, path in sources:
        if kind not in LABELLED_READERS:
            raise ValueError(f"unknown data format {kind!r}: expected one of {', '.join(LABELLED_READERS)}")
        records.extend(LABELLED_READERS[kind](path))
    return records
