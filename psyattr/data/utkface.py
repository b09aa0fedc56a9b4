"""Reader for UTKFace file names: `<age>_<gender>_<race>_<datetime>.jpg[.chip.jpg]`."""

from __future__ import annotations

import os
from pathlib import Path

from psyattr.data.labels import FaceRecord, age_to_group, warn_skipped

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def parse_utkface_name(name: str) -> tuple[int, int]:
    """Return (age in years, gender 0 male / 1 female) from a UTKFace file name, or raise ValueError."""
    fields = name.split("_")
    if len(fields) != 4:
        raise ValueError(f"expected 4 fields age_gender_race_datetime, got {len(fields)}")
    age_text, gender_text, race_text = fields[:3]
    if not (age_text.isdigit() and gender_text.isdigit() and race_text.isdigit()):
        raise ValueError("age, gender and race must be integers")
    age, gender = int(age_text), int(gender_text)
    if gender not in (0, 1):
        raise ValueError(f"gender must be 0 (male) or 1 (female), got {gender}")
    if not 0 <= age <= 120:
        raise ValueError(f"age {age} is outside 0..120")
    return age, gender


def read_utkface(folder: str | os.PathLike) -> list[FaceRecord]:
    """Read every labelled image of a UTKFace folder (or its `images/` subfolder), skipping bad names."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"UTKFace folder not found: {root} (pass the folder holding the images)")
    if (root / "images").is_dir():
        root = root / "images"
    records, skipped = [], []
    for path in sorted(root.iterdir()):
        if not path.name.lower().endswith(IMAGE_SUFFIXES):
            continue
        try:
            age, gender = parse_utkface_name(path.name)
        except ValueError as err:
            skipped.append((path.name, str(err)))
            continue
        records.append(FaceRecord(path, age_to_group(age), gender))
    warn_skipped(str(root), skipped)
    if not records:
        raise ValueError(
            f"no UTKFace images in {root}: expected files named age_gender_race_datetime.jpg"
            f"{f' ({len(skipped)} skipped as malformed)' if skipped else ''}"
        )
    return records
