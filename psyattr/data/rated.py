"""Rated faces: images with mean human ratings of attributes, from OMI, 10k US Adult Faces or a generic CSV.

Every reader yields a `RatedFaces`: image paths, raw ratings per attribute on the data set's declared
scale, and the mapping from the paper's four attributes (attractive, happy, confident, intelligent) to
the data set's columns, with a note wherever a column only stands in for one of them.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PAPER_ATTRIBUTES = ("attractive", "happy", "confident", "intelligent")
# The paper's 1..9 scale (10k US Adult Faces): MAEs in its Table 1 are on this scale.
PAPER_SCALE = (1.0, 9.0)


class RatingsError(ValueError):
    """Rating data that cannot be used (missing files or columns, nothing valid left)."""


@dataclasses.dataclass
class RatedFaces:
    """Face images with raw ratings on `scale`; NaN marks a missing or unusable rating."""

    name: str
    ids: list[str]
    paths: list[Path]
    ratings: dict[str, np.ndarray]
    scale: tuple[float, float]
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)
    stand_ins: dict[str, str] = dataclasses.field(default_factory=dict)
    problems: list[str] = dataclasses.field(default_factory=list)
    landmarks: dict[str, Path] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def attributes(self) -> list[str]:
        """The rated columns."""
        return list(self.ratings)

    def resolve(self, attribute: str) -> str:
        """The column holding `attribute` (a column name or one of the paper's four names)."""
        key = attribute.strip().lower().replace(" ", "_").replace("-", "_")
        columns = {c.lower().replace("-", "_"): c for c in self.ratings}
        if key in columns:
            return columns[key]
        if key in self.aliases:
            return self.aliases[key]
        raise RatingsError(f"{self.name} has no attribute {attribute!r}; it has: {', '.join(self.attributes)}"
                           + (f" (and the paper's names {', '.join(sorted(self.aliases))})" if self.aliases else ""))

    def note(self, attribute: str) -> str | None:
        """A sentence saying that `attribute` is a stand-in, or None."""
        return self.stand_ins.get(attribute.strip().lower())

    def normalised(self, column: str) -> np.ndarray:
        """Ratings of `column` mapped from the declared scale to [0, 1]."""
        low, high = self.scale
        return (self.ratings[column] - low) / (high - low)

    def fingerprint(self, columns: Sequence[str] | None = None) -> str:
        """A digest of the rated faces (ids and ratings of `columns`, default all): equal data gives equal digests."""
        digest = hashlib.sha1(json.dumps([self.name, list(self.scale)]).encode())
        digest.update("\n".join(self.ids).encode())
        for column in columns if columns is not None else self.attributes:
            digest.update(column.encode())
            digest.update(np.ascontiguousarray(self.ratings[column], np.float64).tobytes())
        return digest.hexdigest()[:16]

    def index_of(self, ids: Sequence[str]) -> np.ndarray:
        """The positions of `ids` in this data set; RatingsError naming ids it does not hold."""
        position = {item: i for i, item in enumerate(self.ids)}
        missing = [item for item in ids if item not in position]
        if missing:
            raise RatingsError(f"{self.name} does not hold {len(missing)} of the {len(ids)} ids asked for (e.g. "
                               f"{', '.join(missing[:5])}): is it the data set the run was trained on?")
        return np.asarray([position[item] for item in ids], dtype=int)

    def to_scale(self, scores: np.ndarray, scale: tuple[float, float] | None = None) -> np.ndarray:
        """Map [0, 1] scores to `scale` (default: the data set's own)."""
        low, high = scale or self.scale
        return low + np.asarray(scores) * (high - low)


def _to_float(value) -> float:
    if value is None:
        return math.nan
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    if not text:
        return math.nan
    try:
        return float(text)
    except ValueError:
        return math.nan


def build_rated_faces(name: str, rows: Iterable[tuple[str, Path, Mapping[str, object]]], columns: Sequence[str],
                      scale: tuple[float, float], image_dir: Path | None = None, file_problems: Sequence[str] = (),
                      **extra) -> RatedFaces:
    """Validate (id, image path, {column: raw value}) rows into a RatedFaces, reporting each kind of problem once."""
    low, high = scale
    if not low < high:
        raise RatingsError(f"{name}: the rating scale must have low < high, got {scale}")
    ids, paths, values = [], [], {c: [] for c in columns}
    seen: set[str] = set()
    duplicates, absent, bad_cells = [], [], {c: [] for c in columns}
    for item_id, path, cells in rows:
        if item_id in seen:
            duplicates.append(item_id)
            continue
        seen.add(item_id)
        if not path.is_file():
            absent.append(path.name)
            continue
        ids.append(item_id)
        paths.append(path)
        for column in columns:
            value = _to_float(cells.get(column))
            if not math.isfinite(value) or not low <= value <= high:
                bad_cells[column].append(item_id)
                value = math.nan
            values[column].append(value)
    problems = list(file_problems)
    if duplicates:
        problems.append(f"{len(duplicates)} duplicated id(s), first kept: {', '.join(duplicates[:5])}")
    if absent:
        problems.append(f"{len(absent)} image(s) named in the ratings are missing: {', '.join(absent[:5])}")
    for column, bad in bad_cells.items():
        if bad:
            problems.append(f"{len(bad)} missing, non-numeric or out-of-scale rating(s) of {column!r} "
                            f"(ids {', '.join(bad[:5])})")
    if image_dir is not None and image_dir.is_dir():
        named = {p.name for p in paths} | set(absent)
        unrated = [p.name for p in image_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")
                   and p.name not in named]
        if unrated:
            problems.append(f"{len(unrated)} image(s) have no ratings and are left out: {', '.join(sorted(unrated)[:5])}")
    for problem in problems:
        log.warning("%s: %s", name, problem)
    if not ids:
        raise RatingsError(f"{name}: no rated image is left ({'; '.join(problems) or 'no rows'})")
    ratings = {c: np.asarray(v, dtype=np.float64) for c, v in values.items()}
    return RatedFaces(name, ids, paths, ratings, (float(low), float(high)), problems=problems, **extra)


def _read_csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]], list[str]]:
    """Header, rows with every field, and a problem line for the ragged rows left out (with their line numbers)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            rows, ragged = [], []
            for row in reader:
                # DictReader fills a short row's missing fields with None and keeps a long row's extras under None.
                if None in row or any(value is None for value in row.values()):
                    fields = len(header) - sum(v is None for v in row.values()) + len(row.get(None) or [])
                    ragged.append(f"line {reader.line_num} ({fields} fields)")
                    continue
                rows.append(row)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise RatingsError(f"cannot read ratings file {path}: {err}") from err
    problems = []
    if ragged:
        problems.append(f"{len(ragged)} row(s) of {path.name} do not have the header's {len(header)} fields and are "
                        f"left out: {', '.join(ragged[:5])}{' ...' if len(ragged) > 5 else ''}")
    return header, rows, problems


OMI_ALIASES = {"attractive": "attractive", "happy": "happy", "intelligent": "smart", "confident": "dominant"}
OMI_STAND_INS = {
    "intelligent": "OMI's 'smart' rating stands in for the paper's 'intelligent'",
    "confident": "OMI has no 'confident' rating: 'dominant' stands in for it",
}


def read_omi(folder: str | os.PathLike) -> RatedFaces:
    """One Million Impressions: `attribute_means.csv` (34 attributes, 0..100) and `images_256/<stimulus>.jpg`."""
    root = Path(folder)
    ratings_file = root / "attribute_means.csv"
    if not ratings_file.is_file():
        raise RatingsError(f"{ratings_file} not found: pass the OMI folder holding attribute_means.csv and images_256/")
    header, rows, file_problems = _read_csv_rows(ratings_file)
    if "stimulus" not in header:
        raise RatingsError(f"{ratings_file} has no 'stimulus' column (columns: {', '.join(header)})")
    image_dir = root / "images_256" if (root / "images_256").is_dir() else root / "images"
    columns = [c for c in header if c != "stimulus"]
    items = [(row["stimulus"].strip(), image_dir / f"{row['stimulus'].strip()}.jpg", row) for row in rows]
    return build_rated_faces("OMI", items, columns, (0.0, 100.0), image_dir, file_problems,
                             aliases=dict(OMI_ALIASES), stand_ins=dict(OMI_STAND_INS))


def _find(root: Path, *candidates: str) -> Path | None:
    for candidate in candidates:
        if (root / candidate).exists():
            return root / candidate
    return None


def read_us10k(folder: str | os.PathLike) -> RatedFaces:
    """10k US Adult Faces: `psychology-attributes.xlsx` (sheet "Final Values", or its CSV export), 1..9 ratings."""
    root = Path(folder)
    table = _find(root, "psychology attributes/psychology-attributes.xlsx", "psychology-attributes.xlsx",
                  "psychology attributes/psychology-attributes.csv", "psychology-attributes.csv")
    if table is None:
        raise RatingsError(f"no psychology-attributes.xlsx (or .csv) under {root}: pass the 10k US Adult Faces folder")
    if table.suffix == ".xlsx":
        header, rows = _read_xlsx(table, "Final Values")
        file_problems = []
    else:
        header, rows, file_problems = _read_csv_rows(table)
    if "Filename" not in header:
        raise RatingsError(f"{table} has no 'Filename' column (columns: {', '.join(map(str, header))})")
    numbers = {}
    listing = _find(root, "Full Attribute Scores/target-filenames.txt", "target-filenames.txt")
    if listing is not None:
        for line in listing.read_text(encoding="utf-8", errors="replace").splitlines():
            number, _, filename = line.strip().partition(",")
            if number.strip().isdigit() and filename.strip():
                numbers[filename.strip()] = number.strip()
    image_dir = _find(root, "Face Annotations/Images and Annotations", "images") or root
    columns = [str(c) for c in header if c not in ("Filename", "Image #") and c]
    items = []
    for row in rows:
        filename = str(row.get("Filename") or "").strip()
        number = numbers.get(filename) or str(row.get("Image #") or "").strip().removesuffix(".0")
        path = image_dir / f"{number}.jpg" if number else image_dir / filename
        items.append((filename or number, path, row))
    faces = build_rated_faces("10k US Adult Faces", items, columns, PAPER_SCALE, None, file_problems)
    # 77 facial landmarks ("x y" per line) sit beside the images as {N}_landmarks.txt.
    for item_id, image in zip(faces.ids, faces.paths):
        landmark_file = image.with_name(f"{image.stem}_landmarks.txt")
        if landmark_file.is_file():
            faces.landmarks[item_id] = landmark_file
    return faces


def _read_xlsx(path: Path, sheet: str) -> tuple[list[str], list[dict[str, object]]]:
    import openpyxl

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as err:  # openpyxl raises several kinds for a damaged workbook
        raise RatingsError(f"cannot read workbook {path}: {err}") from err
    if sheet not in book.sheetnames:
        raise RatingsError(f"{path} has no sheet {sheet!r} (sheets: {', '.join(book.sheetnames)})")
    values = list(book[sheet].iter_rows(values_only=True))
    book.close()
    if not values:
        raise RatingsError(f"sheet {sheet!r} of {path} is empty")
    header = [str(h).strip() if h is not None else "" for h in values[0]]
    return header, [dict(zip(header, row)) for row in values[1:] if any(v is not None for v in row)]


IMAGE_COLUMNS = ("image", "path", "file", "filename", "image_path")


def read_rated_csv(path: str | os.PathLike, scale: tuple[float, float], image_column: str | None = None) -> RatedFaces:
    """A generic CSV: an image-path column (relative to the CSV's folder) and attribute columns on `scale`."""
    path = Path(path)
    header, rows, file_problems = _read_csv_rows(path)
    column = image_column or next((c for c in header if c.lower() in IMAGE_COLUMNS), None)
    if column is None or column not in header:
        raise RatingsError(f"{path}: no image column ({image_column or ' / '.join(IMAGE_COLUMNS)}); "
                           f"columns are {', '.join(header)}")
    columns = [c for c in header if c != column]
    items = [(row[column].strip(), (path.parent / row[column].strip()).resolve(), row) for row in rows]
    return build_rated_faces(path.name, items, columns, scale, None, file_problems)


RATED_READERS = {"omi": read_omi, "10k": read_us10k}


def read_rated(kind: str, path: str | os.PathLike, scale: tuple[float, float] | None = None,
               image_column: str | None = None) -> RatedFaces:
    """Read rated faces of `kind` ("omi", "10k" or "csv"; csv needs `scale`)."""
    if kind == "csv":
        if scale is None:
            raise RatingsError("a generic CSV needs its rating scale (e.g. --scale 1,9)")
        return read_rated_csv(path, scale, image_column)
    if kind not in RATED_READERS:
        raise RatingsError(f"unknown rated data format {kind!r}: expected omi, 10k or csv")
    return RATED_READERS[kind](path)
