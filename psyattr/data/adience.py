"""Reader for Adience: `fold_*_data.txt` label files and the aligned face folders."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from psyattr.data.labels import FaceRecord, age_to_group, warn_skipped

_AGE_RANGE = re.compile(r"^\(\s*(\d+)\s*,\s*(\d+)\s*\)$")
_GENDERS = {"m": 0, "f": 1}
# Adience ships its faces in two crops; the aligned one is what Levi & Hassner trained on.
_FACE_FOLDERS = (("aligned", "landmark_aligned_face"), ("faces", "coarse_tilt_aligned_face"))


def parse_adience_age(text: str) -> int:
    """Map an Adience age label ("(25, 32)" or "35") to an age group index, or raise ValueError."""
    text = text.strip()
    match = _AGE_RANGE.match(text)
    if match:
        low, high = int(match.group(1)), int(match.group(2))
        return age_to_group((low + high) / 2)
    if text.isdigit():
        return age_to_group(int(text))
    raise ValueError(f"age {text!r} is neither '(low, high)' nor a number")


def _find_image(root: Path, user_id: str, face_id: str, original: str) -> Path | None:
    for folder, prefix in _FACE_FOLDERS:
        candidate = root / folder / user_id / f"{prefix}.{face_id}.{original}"
        if candidate.is_file():
            return candidate
    return None


def read_adience(folder: str | os.PathLike) -> list[FaceRecord]:
    """Read all `fold_*_data.txt` files of an Adience folder; bad rows and missing images are skipped."""
    root = Path(folder)
    folds = sorted(root.glob("fold_*_data.txt"))
    if not folds:
        raise FileNotFoundError(f"no fold_*_data.txt files in {root}: pass the Adience folder that holds them")
    records, skipped = [], []
    for fold in folds:
        with open(fold, newline="", encoding="utf-8") as handle:
            for line_no, row in enumerate(csv.DictReader(handle, delimiter="\t"), start=2):
                where = f"{fold.name}:{line_no}"
                try:
                    user_id, original, face_id = row["user_id"], row["original_image"], row["face_id"]
                    age_text, gender_text = row["age"] or "", (row["gender"] or "").strip()
                except KeyError as err:
                    raise ValueError(f"{fold}: missing column {err}; expected Adience's fold_*_data.txt header") from None
                try:
                    age_group = parse_adience_age(age_text) if age_text.strip() not in ("", "None") else -1
                except ValueError as err:
                    skipped.append((where, str(err)))
                    continue
                gender = _GENDERS.get(gender_text, -1)
                image = _find_image(root, user_id, face_id, original)
                if image is None:
                    skipped.append((where, f"image {face_id}.{original} of {user_id} not found"))
                    continue
                if age_group < 0 and gender < 0:
                    skipped.append((where, "neither age nor gender is labelled"))
                    continue
                records.append(FaceRecord(image, age_group, gender))
    warn_skipped(str(root), skipped)
    if not records:
        raise ValueError(f"no usable Adience faces under {root} ({len(skipped)} rows skipped)")
    return records
