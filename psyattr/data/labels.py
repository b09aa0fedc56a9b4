"""Labelled face records shared by the dataset readers, and the Adience age-group rule."""

from __future__ import annotations

import bisect
import dataclasses
import logging
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

# Lower bounds (years) of Adience groups 1..7. Each boundary is the midpoint between two neighbouring
# Adience groups, a midpoint age going to the older group: 0-2 | 3-6 | 7-13 | 14-22 | 23-34 | 35-45 |
# 46-56 | 57+.
AGE_GROUP_LOWER_BOUNDS = (3, 7, 14, 23, 35, 46, 57)


def age_to_group(age_years: float) -> int:
    """Map an age in years to the nearest of the 8 Adience groups (index 0..7)."""
    if age_years < 0:
        raise ValueError(f"age must be >= 0 years, got {age_years}")
    return bisect.bisect_right(AGE_GROUP_LOWER_BOUNDS, age_years)


@dataclasses.dataclass(frozen=True)
class FaceRecord:
    """One face image with its age group (0..7) and gender (0 male, 1 female); -1 where unknown."""

    path: Path
    age_group: int = -1
    gender: int = -1

    def label(self, task: str) -> int:
        """The record's label for `task` ("age" or "gender")."""
        return self.age_group if task == "age" else self.gender


def warn_skipped(source: str, skipped: list[tuple[str, str]], shown: int = 5) -> None:
    """Log one warning naming how many entries of `source` were skipped, with the first few reasons."""
    if not skipped:
        return
    examples = "; ".join(f"{name}: {why}" for name, why in skipped[:shown])
    more = f" (and {len(skipped) - shown} more)" if len(skipped) > shown else ""
    log.warning("skipped %d malformed entries in %s: %s%s", len(skipped), source, examples, more)


def labelled(records: Iterable[FaceRecord], task: str) -> list[FaceRecord]:
    """Keep the records that carry a label for `task`."""
    return [r for r in records if r.label(task) >= 0]
