"""k-fold cross-validation of a fine-tuning recipe: every face predicted once, by a model that never saw it.

A CV folder holds `config.json` (kind "cv": the recipe, the folds and their seed), one ordinary run folder per
fold (`fold_01`, ...; each resumable), `folds.json` (the face ids of each fold), and, when every fold is done,
the pooled `predictions.csv` (id, fold, true and predicted rating) and `metrics.json` (the same measures as a
run's, over all faces, with the raters' ceiling where the data set has single ratings).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from psyattr.checkpoints import atomic_write_text, read_state
from psyattr.data.rated import PAPER_SCALE, RatedFaces, RatingsError
from psyattr.runs import METRICS_FILE, PREDICTIONS_FILE, Run, RunError
from psyattr.train import TrainConfig, _valid_targets, train_regressor
from psyattr.transfer_metrics import regression_scores, with_ceiling

log = logging.getLogger(__name__)

FOLDS_FILE = "folds.json"


def assign_folds(count: int, folds: int, seed: int) -> np.ndarray:
    """The fold (0..folds-1) of each of `count` faces: a seeded shuffle dealt round, so fold sizes differ by <= 1."""
    order = np.random.default_rng(seed).permutation(count)
    assignment = np.empty(count, np.int64)
    assignment[order] = np.arange(count) % folds
    return assignment


def check_folds(data: RatedFaces, columns: list[str], folds: int) -> tuple[np.ndarray, np.ndarray]:
    """The faces rated on every column and their ratings; a clear error when `folds` cannot split them."""
    if folds < 2:
        raise ValueError(f"--cv {folds}: cross-validation needs at least 2 folds")
    index, targets = _valid_targets(data, columns, np.arange(len(data)))
    if folds > len(index):
        raise RatingsError(f"--cv {folds} is more folds than the {len(index)} faces of {data.name} rated on "
                           f"{', '.join(columns)}: give at most --cv {len(index)}")
    if len(index) - -(-len(index) // folds) < 2:
        raise RatingsError(f"--cv {folds} leaves fewer than 2 training faces per fold ({len(index)} rated faces)")
    return index, targets


def _fold_dir(out_dir: Path, fold: int) -> Path:
    return out_dir / f"fold_{fold + 1:02d}"


def cross_validate(data: RatedFaces, out_dir: str | os.PathLike, config: TrainConfig, folds: int,
                   data_spec: dict[str, Any] | None = None, cache_dir: str | os.PathLike | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Train one model per fold (finished folds are kept, unfinished ones resumed) and score the pooled predictions."""
    from psyattr.ceiling import ceilings

    out_dir = Path(out_dir)
    columns = [data.resolve(a) for a in config.attributes]
    index, targets = check_folds(data, columns, folds)
    assignment = assign_folds(len(index), folds, config.seed)
    fold_ids = [[data.ids[i] for i in index[assignment == k]] for k in range(folds)]
    record = {"kind": "cv", "folds": folds, "seed": config.seed, "base": config.base, "mode": config.mode,
              "attributes": list(config.attributes), "columns": columns, "epochs": config.epochs,
              "batch_size": config.batch_size, "learning_rate": config.learning_rate, "framing": config.framing,
              "data": data_spec or {"name": data.name}}
    _start(out_dir, record, fold_ids)
    seconds = []
    for k in range(folds):
        fold_dir = _fold_dir(out_dir, k)
        if (fold_dir / METRICS_FILE).exists() and (fold_dir / PREDICTIONS_FILE).exists():
            continue
        log.info("fold %d of %d: %d train / %d test faces", k + 1, folds, int((assignment != k).sum()),
                 int((assignment == k).sum()))
        started = time.perf_counter()
        train_regressor(data, fold_dir, config, data_spec, resume=read_state(fold_dir) is not None,
                        cache_dir=cache_dir, progress=progress,
                        split=(f"fold {k + 1} of {folds}, seed {config.seed}",
                               {"train": index[assignment != k], "test": index[assignment == k]}))
        seconds.append(time.perf_counter() - started)
    metrics = pooled_metrics(data, out_dir, columns, folds, targets, assignment, index, data_spec, ceilings)
    metrics["framing"] = Run.open(_fold_dir(out_dir, 0)).framing
    if seconds:
        metrics["seconds_per_fold"] = float(np.mean(seconds))
    atomic_write_text(out_dir / METRICS_FILE, json.dumps(metrics, indent=2))
    return metrics


def _start(out_dir: Path, record: dict[str, Any], fold_ids: list[list[str]]) -> None:
    """Write the CV folder's config and folds, or check that a folder being resumed holds the same recipe."""
    record = json.loads(json.dumps(record))  # as config.json holds it (tuples become lists)
    if Run.is_run(out_dir):
        saved = Run.open(out_dir).config
        changed = sorted(k for k in record if saved.get(k) != record[k])
        if saved.get("kind") != "cv" or changed:
            raise RunError(f"{out_dir} holds another run ({', '.join(changed) or saved.get('kind')} differ): give "
                           "another --out, or the same options to finish it")
        return
    if out_dir.exists() and any(out_dir.iterdir()):
        raise RunError(f"{out_dir} is not empty and not a CV folder: give another --out")
    Run.start(out_dir, record, {"kind": "cv", "folds": record["folds"], "seed": record["seed"]})
    atomic_write_text(out_dir / FOLDS_FILE, json.dumps(fold_ids, indent=1))


def pooled_metrics(data: RatedFaces, out_dir: Path, columns: list[str], folds: int, targets: np.ndarray,
                   assignment: np.ndarray, index: np.ndarray, data_spec, ceilings) -> dict[str, Any]:
    """Every fold's test predictions as one set: each face once; the baseline is each fold's own training mean."""
    lo, hi = data.scale
    predicted = np.full(targets.shape, np.nan)
    baseline = np.full(targets.shape, np.nan)
    position = {data.ids[i]: p for p, i in enumerate(index)}
    for k in range(folds):
        with open(_fold_dir(out_dir, k) / PREDICTIONS_FILE, newline="") as handle:
            for row in csv.DictReader(handle):
                p = position[row["id"]]
                if assignment[p] != k:
                    raise RunError(f"{_fold_dir(out_dir, k)} predicted face {row['id']} of another fold")
                predicted[p] = [(float(row[f"{c}_predicted"]) - lo) / (hi - lo) for c in columns]
        baseline[assignment == k] = targets[assignment != k].mean(axis=0)
    missing = np.isnan(predicted).any(axis=1)
    if missing.any():
        raise RunError(f"{out_dir}: {missing.sum()} face(s) have no prediction from their fold (e.g. "
                       f"{data.ids[index[np.flatnonzero(missing)[0]]]}): rerun to finish the folds")
    ceiling = ceilings(data_spec, columns, [data.ids[i] for i in index])
    metrics: dict[str, Any] = {"dataset": data.name, "scale": list(data.scale), "protocol": f"{folds}-fold CV",
                               "test_count": int(len(index)), "attributes": {}}
    for k, column in enumerate(columns):
        scores = regression_scores(targets[:, k], predicted[:, k], 0.0, data.scale)
        base_error = float(np.mean(np.abs(baseline[:, k] - targets[:, k])))
        span_paper, span_native = PAPER_SCALE[1] - PAPER_SCALE[0], hi - lo
        scores.update(baseline_mae=base_error, baseline_mae_1_9=base_error * span_paper,
                      baseline_mae_native=base_error * span_native)
        metrics["attributes"][column] = with_ceiling(scores, ceiling.get(column))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "fold", *(f"{c}_true" for c in columns), *(f"{c}_predicted" for c in columns)])
    for p, i in enumerate(index):
        writer.writerow([data.ids[i], int(assignment[p]) + 1, *data.to_scale(targets[p]).round(4),
                         *data.to_scale(predicted[p]).round(4)])
    atomic_write_text(out_dir / PREDICTIONS_FILE, buffer.getvalue())
    return metrics
