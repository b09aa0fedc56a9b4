"""How well people agree with each other: split-half reliability of mean ratings, the ceiling for a model.

For each of many random splits, each face's raters are split at random into two halves (its single ratings
when the data has no rater ids, as OMI has none); each half's mean rating per face is taken and the two halves'
means are correlated over faces (Pearson). With rater ids the unit of the split is the rater: all of one
rater's ratings of a face fall in the same half, so that a rater's habits cannot be shared by both halves.
Both halves hold the same number of units: with an odd number, one unit (drawn anew in each split) sits out.

The split-half r is how well half of the panel predicts the other half; the Spearman-Brown value
2r / (1 + r) is the reliability of the full panel's mean.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from psyattr.checkpoints import atomic_write_text
from psyattr.data.rated import RatingsError
from psyattr.data.trials import TrialRatings

log = logging.getLogger(__name__)

MIN_RATINGS = 4
SPLITS = 50


@dataclasses.dataclass
class Reliability:
    """Split-half agreement on one attribute; `low`, `high` are the 2.5 and 97.5 percentiles of r over splits."""

    attribute: str
    faces: int
    median_ratings: float
    median_raters: float | None
    splits: int
    r: float
    low: float
    high: float
    spearman_brown: float
    left_out: int = 0

    @property
    def unit(self) -> str:
        """What was split: "rater" or "rating"."""
        return "rating" if self.median_raters is None else "rater"

    def as_dict(self) -> dict[str, object]:
        """The fields as plain numbers, for CSV and JSON."""
        return {**dataclasses.asdict(self), "unit": self.unit}


@dataclasses.dataclass
class ReliabilityTable:
    """Reliability of each attribute that could be computed, and every problem met on the way."""

    source: str
    rows: list[Reliability]
    seed: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def __getitem__(self, attribute: str) -> Reliability:
        for row in self.rows:
            if row.attribute == attribute:
                return row
        raise KeyError(f"no reliability of {attribute!r} in {self.source}; it has: {', '.join(r.attribute for r in self.rows)}")


def spearman_brown(r: float, factor: float = 2.0) -> float:
    """The reliability of a panel `factor` times as large as the one whose reliability is `r`."""
    return factor * r / (1 + (factor - 1) * r)


def _units(face: np.ndarray, rating: np.ndarray, rater: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Face, rating sum and rating count of each unit of the split (a face's rater, or a single rating)."""
    if rater is None:
        return face, rating, np.ones(len(rating))
    pairs, index = np.unique(face.astype(np.int64) * (int(rater.max()) + 1) + rater, return_inverse=True)
    return pairs // (int(rater.max()) + 1), np.bincount(index, rating), np.bincount(index).astype(np.float64)


def _half_means(unit_face: np.ndarray, unit_sum: np.ndarray, unit_count: np.ndarray, faces: int, splits: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each half's mean per face in each split, (splits, faces) twice; units must be sorted by face."""
    per_face = np.bincount(unit_face, minlength=faces)
    start = np.concatenate([[0], np.cumsum(per_face)[:-1]])
    # Adding the face index to a uniform key sorts units by face and shuffles them within it, all splits at once.
    order = np.argsort(unit_face[None, :] + rng.random((splits, len(unit_face))), axis=1)
    rank = np.arange(len(unit_face)) - start[unit_face]
    size = (per_face // 2)[unit_face]
    # Equal halves: with an odd count one unit, a different one in each split, sits out, as the
    # Spearman-Brown step from half to full panel assumes two halves of the same size.
    first, second = rank < size, (rank >= size) & (rank < 2 * size)
    means = []
    for half in (first, second):
        chosen = order[:, half]
        bins = (np.arange(splits)[:, None] * faces + unit_face[half][None, :]).ravel()
        sums = np.bincount(bins, unit_sum[chosen].ravel(), splits * faces)
        counts = np.bincount(bins, unit_count[chosen].ravel(), splits * faces)
        means.append((sums / counts).reshape(splits, faces))
    return means[0], means[1]


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))


def _seed(seed: int, attribute: str) -> np.random.Generator:
    # Seeded per attribute name, so that an attribute's value does not depend on which others are computed.
    return np.random.default_rng([seed, zlib.crc32(attribute.encode())])


def attribute_reliability(trials: TrialRatings, attribute: str, splits: int = SPLITS, seed: int = 0,
                          min_ratings: int = MIN_RATINGS) -> tuple[Reliability | None, list[str]]:
    """Split-half reliability of one attribute (None when it cannot be computed) and its problems."""
    if splits < 1:
        raise ValueError(f"splits must be at least 1, got {splits}")
    if min_ratings < 2:
        raise ValueError(f"min_ratings must be at least 2 (one unit per half), got {min_ratings}")
    name = trials.resolve(attribute)
    face, rating, rater = trials.trials_of(name)
    unit_face, unit_sum, unit_count = _units(face, rating, rater)
    per_face = np.bincount(unit_face, minlength=len(trials.stimuli))
    rated = per_face > 0
    few = rated & (per_face < min_ratings)
    problems = []
    what = "raters" if rater is not None else "ratings"
    if few.any():
        shown = [trials.stimuli[i] for i in np.flatnonzero(few)[:5]]
        problems.append(f"{name}: {few.sum()} face(s) with fewer than {min_ratings} {what} are left out of its reliability "
                        f"({', '.join(shown)}{', ...' if few.sum() > 5 else ''})")
    used = rated & ~few
    if used.sum() < 3:
        problems.append(f"{name}: only {used.sum()} face(s) have {min_ratings} or more {what}; "
                        "a correlation over faces needs at least 3, so it has no reliability")
        return None, problems
    keep = used[unit_face]
    renumber = np.cumsum(used) - 1
    unit_face, unit_sum, unit_count = renumber[unit_face[keep]], unit_sum[keep], unit_count[keep]
    first, second = _half_means(unit_face, unit_sum, unit_count, int(used.sum()), splits, _seed(seed, name))
    r = _pearson_rows(first, second)
    if np.isnan(r).all():
        problems.append(f"{name}: the half means do not vary over faces, so they have no correlation")
        return None, problems
    if np.isnan(r).any():
        problems.append(f"{name}: {np.isnan(r).sum()} of {splits} splits had half means that do not vary and are left out")
    mean_r = float(np.nanmean(r))
    ratings_per_face = np.bincount(face, minlength=len(trials.stimuli))[used]
    return Reliability(name, int(used.sum()), float(np.median(ratings_per_face)),
                       None if rater is None else float(np.median(per_face[used])), splits, mean_r,
                       float(np.nanpercentile(r, 2.5)), float(np.nanpercentile(r, 97.5)), spearman_brown(mean_r),
                       int(few.sum())), problems


def split_half_reliability(trials: TrialRatings, attributes: Sequence[str] | None = None, splits: int = SPLITS,
                           seed: int = 0, min_ratings: int = MIN_RATINGS) -> ReliabilityTable:
    """Split-half reliability of each attribute (default: all), with the reader's problems and its own."""
    names = [trials.resolve(a) for a in attributes] if attributes else list(trials.attributes)
    rows, problems = [], list(trials.problems)
    for name in names:
        row, found = attribute_reliability(trials, name, splits, seed, min_ratings)
        problems.extend(found)
        if row is not None:
            rows.append(row)
    if not rows:
        raise RatingsError(f"{trials.source}: no attribute has a reliability ({'; '.join(problems)})")
    return ReliabilityTable(trials.source, rows, seed, problems, list(trials.notes))


def split_half_ceiling(trials: TrialRatings, attribute: str, splits: int = SPLITS, seed: int = 0) -> float:
    """The mean split-half r of `attribute`: a model whose r with mean ratings reaches it does as well as half the raters.

    Compare it with a model's Pearson r against the mean ratings of the same faces, so read `trials` with
    `known` set to those faces (OMI rated 2,035 faces beyond its 1,004 on `trustworthy` only, 30 times each,
    and the 1,004 about 71 times: the two give different ceilings). Faces with too few ratings are left out
    with a logged warning; RatingsError when too few faces are left.
    """
    row, problems = attribute_reliability(trials, attribute, splits, seed)
    if row is None:
        raise RatingsError(f"{trials.source}: no ceiling for {attribute!r} ({'; '.join(problems)})")
    for problem in problems:
        log.warning("%s: %s", trials.source, problem)
    return row.r


def write_reliability(table: ReliabilityTable, path: str | os.PathLike) -> None:
    """Write the table as CSV (one row per attribute) or JSON (rows, problems and notes), by the file's suffix."""
    path = Path(path)
    rows = [row.as_dict() for row in table.rows]
    if path.suffix.lower() == ".json":
        text = json.dumps({"source": table.source, "seed": table.seed, "rows": rows, "problems": table.problems,
                           "notes": table.notes}, indent=2) + "\n"
    elif path.suffix.lower() == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    else:
        raise ValueError(f"cannot write a reliability table to {path}: the name must end in .csv or .json")
    atomic_write_text(path, text)
