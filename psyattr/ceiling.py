"""The raters' own agreement as a model's yardstick: the split-half r of the mean ratings on its test faces."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from psyattr.data.rated import RatingsError

log = logging.getLogger(__name__)


def trial_ratings_of(data_spec: dict[str, Any] | None) -> tuple[str, Path] | None:
    """Where the single ratings of a rated data set are (OMI: its `attribute_ratings` file), or None."""
    spec = data_spec or {}
    if spec.get("kind") == "omi" and spec.get("path"):
        from psyattr.data.trials import omi_ratings_file

        try:
            return "omi", omi_ratings_file(Path(spec["path"]))
        except (RatingsError, FileNotFoundError):
            return None
    return None


def ceilings(data_spec: dict[str, Any] | None, columns: Sequence[str], face_ids: Sequence[str], seed: int = 0
             ) -> dict[str, dict[str, Any]]:
    """Per column, the raters' split-half r over `face_ids` (mean of 50 random splits, 2.5-97.5 % of them).

    Empty when the data set has no single ratings; a column they do not cover is left out with a log line.
    """
    source = trial_ratings_of(data_spec)
    if source is None:
        return {}
    from psyattr.data.trials import read_trials
    from psyattr.reliability import attribute_reliability

    trials = read_trials(source[0], source[1], known=face_ids)
    found: dict[str, dict[str, Any]] = {}
    for column in columns:
        try:
            row, problems = attribute_reliability(trials, column, seed=seed)
        except RatingsError as err:
            log.warning("no ceiling for %s: %s", column, err)
            continue
        for problem in problems:
            log.warning("%s", problem)
        if row is not None:
            found[column] = {"r": row.r, "low": row.low, "high": row.high, "faces": row.faces, "splits": row.splits,
                             "unit": row.unit, "source": trials.source}
    return found
