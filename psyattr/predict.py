"""Scoring photos: frame each as the model expects, score in batches, and write one row per photo (CSV or JSON)."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from psyattr.checkpoints import atomic_write_text
from psyattr.faces.framing import Framing, framed_batches
from psyattr.models.levi_hassner import AGE_GROUP_MIDPOINTS, AGE_GROUPS

Predictor = Callable[[np.ndarray], dict[str, np.ndarray]]
"""Images `(N, 227, 227, 3)` to named outputs `{key: (N,)}` as the `serving_default` signature gives them."""

AGE_KEYS = tuple("prob_" + group.replace("-", "_") for group in AGE_GROUPS)


def expected_age(outputs: dict[str, float]) -> float | None:
    """The expected age in years of an age net's outputs (group probabilities times midpoints); None for others."""
    if not all(key in outputs for key in AGE_KEYS):
        return None
    return float(sum(outputs[key] * mid for key, mid in zip(AGE_KEYS, AGE_GROUP_MIDPOINTS)))


def predict_files(predict: Predictor, paths: Sequence[str | os.PathLike], framing: Framing, batch_size: int = 16,
                  progress: bool = False) -> list[dict[str, Any]]:
    """One record per photo, in order: `image`, `framing`, the named `outputs` (and `expected_age` for an age net),
    or an `error` saying why the photo could not be scored.

    `predict` is `ExplainerClient.predict` or, in process, `psyattr.export.local_predictor(model)`.
    """
    paths = [Path(p) for p in paths]
    records: list[dict[str, Any] | None] = [None] * len(paths)
    with tqdm(total=len(paths), desc="predicting", unit="img", disable=not progress) as bar:
        for batch in framed_batches(paths, framing, batch_size):
            for index, (path, why) in zip(batch.failed_indices, batch.failed):
                records[index] = {"image": str(path), "framing": framing.name, "error": why}
            if batch.faces:
                outputs = predict(batch.images)
                for row, (index, face) in enumerate(zip(batch.indices, batch.faces)):
                    values = {key: float(value[row]) for key, value in outputs.items()}
                    record: dict[str, Any] = {"image": str(paths[index]), "framing": framing.name, "outputs": values}
                    age = expected_age(values)
                    if age is not None:
                        record["expected_age"] = age
                    if face.notes:
                        record["framing_notes"] = list(face.notes)
                    records[index] = record
            bar.update(len(batch.faces) + len(batch.failed))
    return [r for r in records if r is not None]


def write_predictions(records: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write records as CSV (`.csv`: one column per output) or JSON (`.json`), by the file's suffix."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        atomic_write_text(path, json.dumps(list(records), indent=2))
        return path
    if path.suffix.lower() != ".csv":
        raise ValueError(f"cannot tell the format of {path.name!r}: give a .csv or .json file")
    keys: list[str] = []
    for record in records:
        keys.extend(k for k in record.get("outputs", {}) if k not in keys)
    columns = ["image", "framing", *keys]
    if any("expected_age" in r for r in records):
        columns.append("expected_age")
    columns += ["framing_notes", "error"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for record in records:
        row = {"image": record["image"], "framing": record.get("framing", ""), **record.get("outputs", {}),
               "expected_age": record.get("expected_age", ""), "framing_notes": "; ".join(record.get("framing_notes", [])),
               "error": record.get("error", "")}
        writer.writerow({k: row.get(k, "") for k in columns})
    atomic_write_text(path, buffer.getvalue())
    return path
