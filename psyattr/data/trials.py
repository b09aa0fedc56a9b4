"""Trial-level ratings: every single judgement of a face, from OMI's `attribute_ratings.zip` or a long-format CSV.

Every reader yields a `TrialRatings`: one entry per kept trial (face, attribute, rating and, when the data
has them, the rater), sorted by attribute then face so that one attribute is one contiguous slice. Unusable
trials are left out and reported in `problems`, each kind once, with counts and the first line numbers.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import zipfile
from collections.abc import Iterable, Sequence
from itertools import compress, repeat
from pathlib import Path

import numpy as np

from psyattr.data.rated import IMAGE_COLUMNS, RatingsError

OMI_SCALE = (0.0, 100.0)
OMI_MEMBER = "attribute_ratings.csv"
OMI_COLUMNS = ("rating", "attribute", "rating_type", "stimulus")
# OMI's "repeat" trials show a face a second time, so they are not independent of its first showing; its
# "fill-in" trials are left out with them.
OMI_KEPT_TYPE = "normal"
CSV_COLUMNS = ("image", "attribute", "rating")
SHOWN = 5


@dataclasses.dataclass
class TrialRatings:
    """Single ratings on `scale`, one per trial, sorted by attribute then face; `rater` is None without rater ids."""

    source: str
    stimuli: list[str]
    attributes: list[str]
    face: np.ndarray
    attribute: np.ndarray
    rating: np.ndarray
    scale: tuple[float, float]
    rater: np.ndarray | None = None
    raters: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        # Offsets of each attribute's slice, so that a lookup never scans the million trials.
        self._bounds = np.searchsorted(self.attribute, np.arange(len(self.attributes) + 1))
        self._stimulus_index = {s: i for i, s in enumerate(self.stimuli)}

    def __len__(self) -> int:
        return len(self.rating)

    @property
    def has_raters(self) -> bool:
        """Whether each trial names its rater."""
        return self.rater is not None

    def resolve(self, attribute: str) -> str:
        """The attribute as the data spells it, from any spelling (`well_groomed` for `well-groomed`)."""
        key = _key(attribute)
        for name in self.attributes:
            if _key(name) == key:
                return name
        raise RatingsError(f"{self.source} has no ratings of {attribute!r}; it has: {', '.join(self.attributes)}")

    def trials_of(self, attribute: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Face index, rating and rater index (or None) of every trial of `attribute`, sorted by face."""
        code = self.attributes.index(self.resolve(attribute))
        part = slice(self._bounds[code], self._bounds[code + 1])
        return self.face[part], self.rating[part], None if self.rater is None else self.rater[part]

    def ratings(self, stimulus: str, attribute: str) -> np.ndarray:
        """The single ratings of one face on one attribute (empty when it has none)."""
        face, rating, _ = self.trials_of(attribute)
        return rating[self._face_slice(face, stimulus)]

    def rater_ids(self, stimulus: str, attribute: str) -> list[str]:
        """The rater of each of `ratings(stimulus, attribute)`; empty without rater ids."""
        face, _, rater = self.trials_of(attribute)
        if rater is None:
            return []
        return [self.raters[r] for r in rater[self._face_slice(face, stimulus)]]

    def _face_slice(self, face: np.ndarray, stimulus: str) -> slice:
        index = self._stimulus_index.get(str(stimulus))
        if index is None:
            return slice(0, 0)
        return slice(*np.searchsorted(face, [index, index + 1]))


def _key(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def _factorize(values: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    names = list(dict.fromkeys(values))
    codes = {name: i for i, name in enumerate(names)}
    return np.fromiter(map(codes.__getitem__, values), dtype=np.int64, count=len(values)), names


def _parse_ratings(values: Sequence[str]) -> np.ndarray:
    try:
        return np.asarray(values, dtype=str).astype(np.float64)
    except ValueError:
        # Only a file with a non-numeric cell pays for the slow path.
        return np.fromiter((_to_float(v) for v in values), dtype=np.float64, count=len(values))


def _to_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _lines(numbers: np.ndarray) -> str:
    return ", ".join(str(n) for n in numbers[:SHOWN]) + (", ..." if len(numbers) > SHOWN else "")


def build_trial_ratings(source: str, columns: dict[str, Sequence[str]], lines: np.ndarray, scale: tuple[float, float],
                        known: Iterable[str] | None = None, problems: list[str] | None = None,
                        notes: list[str] | None = None) -> TrialRatings:
    """Validate raw columns (image, attribute, rating, optional rater; `lines` their line numbers) into TrialRatings."""
    low, high = scale
    if not low < high:
        raise RatingsError(f"{source}: the rating scale must have low < high, got {scale}")
    problems = list(problems or [])
    notes = list(notes or [])
    lines = np.asarray(lines)
    images, image_names = _factorize(list(map(str.strip, columns["image"])))
    attributes, attribute_names = _factorize(list(map(str.strip, columns["attribute"])))
    rating = _parse_ratings(columns["rating"])
    keep = np.ones(len(rating), dtype=bool)

    blank = np.isin(images, [i for i, n in enumerate(image_names) if not n])
    blank |= np.isin(attributes, [i for i, n in enumerate(attribute_names) if not n])
    if blank.any():
        problems.append(f"{blank.sum()} rating(s) name no image or no attribute and are left out (lines {_lines(lines[blank])})")
    keep &= ~blank

    bad = keep & ~(np.isfinite(rating) & (rating >= low) & (rating <= high))
    if bad.any():
        shown = ", ".join(f"line {n}: {columns['rating'][i].strip()!r}" for n, i in zip(lines[bad][:SHOWN], np.flatnonzero(bad)))
        problems.append(f"{bad.sum()} non-numeric or out-of-scale rating(s) (scale {low:g}..{high:g}) are left out "
                        f"({shown}{', ...' if bad.sum() > SHOWN else ''})")
    keep &= ~bad

    if known is not None:
        known = {str(k).strip() for k in known}
        unknown_images = np.array([n not in known and bool(n) for n in image_names])
        unknown = keep & unknown_images[images]
        if unknown.any():
            names = [image_names[i] for i in np.unique(images[unknown])]
            problems.append(f"{unknown.sum()} rating(s) of {len(names)} face(s) not in the rated set are left out "
                            f"({', '.join(names[:SHOWN])}{', ...' if len(names) > SHOWN else ''})")
        keep &= ~unknown

    raters = rater_names = None
    if "rater" in columns:
        raters, rater_names = _factorize(list(map(str.strip, columns["rater"])))
        anonymous = keep & np.isin(raters, [i for i, n in enumerate(rater_names) if not n])
        if anonymous.any():
            # A trial without a rater id cannot share a half with that rater's other trials, so it forms its own.
            problems.append(f"{anonymous.sum()} rating(s) have no rater id and each counts as a rater of its own "
                            f"(lines {_lines(lines[anonymous])})")
            raters = raters.copy()
            raters[anonymous] = len(rater_names) + np.arange(anonymous.sum())
            rater_names = rater_names + [f"(line {n})" for n in lines[anonymous]]

    if not keep.any():
        raise RatingsError(f"{source}: no usable rating is left ({'; '.join(problems) or 'no rows'})")

    # Codes are renumbered over the kept trials so that no face or attribute is listed without a rating.
    face, stimuli = _recode(images[keep], image_names)
    attribute, attribute_list = _recode(attributes[keep], attribute_names)
    rater = rater_list = None
    if raters is not None:
        rater, rater_list = _recode(raters[keep], rater_names)
    order = np.lexsort((face, attribute))
    return TrialRatings(source, stimuli, attribute_list, face[order], attribute[order], rating[keep][order],
                        (float(low), float(high)), None if rater is None else rater[order], rater_list or [],
                        problems, notes)


def _recode(codes: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str]]:
    used, index = np.unique(codes, return_inverse=True)
    return index.astype(np.int32), [names[u] for u in used]


def _split_csv(text: str) -> tuple[list[str], list[list[str]], np.ndarray, list[str]]:
    """Header, columns, line numbers of the kept rows and problems (ragged rows) of CSV text."""
    text = text.replace("\r\n", "\n")
    problems = []
    if '"' not in text:
        # Unquoted CSV (OMI) is split in C: a per-row csv.reader would take most of the load time.
        lines = text.split("\n")
        header = [h.strip() for h in lines[0].split(",")]
        body = lines[1:]
        commas = len(header) - 1
        good = np.fromiter(map(str.count, body, repeat(",")), dtype=np.int64, count=len(body)) == commas
        empty = np.zeros(len(body), dtype=bool)
        empty[~good] = [not body[i].strip() for i in np.flatnonzero(~good)]
        numbers = np.flatnonzero(good) + 2
        ragged = np.flatnonzero(~good & ~empty) + 2
        if not good.all():
            body = [line for line, ok in zip(body, good) if ok]
        cells = ",".join(body).split(",") if body else []
        columns = [cells[i::len(header)] for i in range(len(header))]
    else:
        reader = csv.reader(io.StringIO(text))
        header = [h.strip() for h in next(reader, [])]
        rows, kept, bad = [], [], []
        for row in reader:
            if not row:
                continue
            if len(row) == len(header):
                rows.append(row)
                kept.append(reader.line_num)
            else:
                bad.append(reader.line_num)
        numbers, ragged = np.asarray(kept, dtype=np.int64), np.asarray(bad, dtype=np.int64)
        columns = [list(c) for c in zip(*rows)] if rows else [[] for _ in header]
    if len(ragged):
        problems.append(f"{len(ragged)} row(s) do not have the header's {len(header)} fields and are left out "
                        f"(lines {_lines(ragged)})")
    return header, columns, numbers, problems


def _require(header: list[str], required: Sequence[str], source: str, fix: str) -> dict[str, int]:
    where = {h.lower(): i for i, h in enumerate(header)}
    missing = [c for c in required if c not in where]
    if missing:
        raise RatingsError(f"{source} has no column {', '.join(map(repr, missing))} (columns: {', '.join(header) or 'none'}); "
                           f"{fix}")
    return where


def omi_ratings_file(path: Path) -> Path:
    """OMI's single-ratings file: `path` itself, or the `attribute_ratings.zip` (or .csv) in the folder `path`."""
    if path.is_dir():
        for name in ("attribute_ratings.zip", OMI_MEMBER):
            if (path / name).is_file():
                return path / name
        raise RatingsError(f"no attribute_ratings.zip in {path}: pass the OMI folder or the zip itself")
    if not path.is_file():
        raise RatingsError(f"{path} not found: pass OMI's attribute_ratings.zip or the folder holding it")
    return path


def _read_text(path: Path) -> str:
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.namelist() if m.endswith(".csv")]
                member = next((m for m in members if Path(m).name == OMI_MEMBER), members[0] if len(members) == 1 else None)
                if member is None:
                    raise RatingsError(f"{path} holds no {OMI_MEMBER} (it holds: {', '.join(archive.namelist()) or 'nothing'})")
                data = archive.read(member)
        else:
            data = path.read_bytes()
        return data.decode("utf-8-sig")
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError) as err:
        raise RatingsError(f"cannot read ratings file {path}: {err}") from err


def read_omi_trials(path: str | os.PathLike, known: Iterable[str] | None = None) -> TrialRatings:
    """OMI's single ratings (`normal` trials, 0..100) from `attribute_ratings.zip` or its folder, unextracted."""
    source = omi_ratings_file(Path(path))
    header, columns, lines, problems = _split_csv(_read_text(source))
    where = _require(header, OMI_COLUMNS, str(source), "pass OMI's unchanged attribute_ratings.zip")
    types = np.asarray(columns[where["rating_type"]])
    kept = types == OMI_KEPT_TYPE
    left, counts = np.unique(types[~kept], return_counts=True)
    notes = [f"{kept.sum():,} {OMI_KEPT_TYPE} trials kept of {len(types):,}"
             + (f" ({', '.join(f'{c:,} {t}' for t, c in zip(left, counts))} left out)" if len(left) else ""),
             "OMI has no rater ids: each face's trials are split, not its raters"]
    if not kept.all():
        columns = [list(compress(c, kept)) for c in columns]
        lines = lines[kept]
    named = {"image": columns[where["stimulus"]], "attribute": columns[where["attribute"]],
             "rating": columns[where["rating"]]}
    return build_trial_ratings(f"OMI {source.name}", named, lines, OMI_SCALE, known, problems, notes)


def read_trials_csv(path: str | os.PathLike, scale: tuple[float, float], known: Iterable[str] | None = None) -> TrialRatings:
    """A long-format CSV: one rating a row, columns image, attribute, rating and (optional) rater, on `scale`."""
    path = Path(path)
    if not path.is_file():
        raise RatingsError(f"{path} not found: pass a CSV with columns image, attribute, rating[, rater]")
    header, columns, lines, problems = _split_csv(_read_text(path))
    where = _require(header, CSV_COLUMNS, str(path), "the file needs one row per rating with columns image, attribute, "
                                                      "rating and, if known, rater")
    named = {name: columns[where[name]] for name in CSV_COLUMNS}
    notes = []
    if "rater" in where:
        named["rater"] = columns[where["rater"]]
    else:
        problems.append("no 'rater' column: each face's ratings are split as if every rating came from another rater")
    return build_trial_ratings(path.name, named, lines, scale, known, problems, notes)


def read_trials(kind: str, path: str | os.PathLike, scale: tuple[float, float] | None = None,
                known: Iterable[str] | None = None) -> TrialRatings:
    """Read single ratings of `kind` ("omi" or "csv"; csv needs `scale`), keeping only faces in `known` if given."""
    if kind == "omi":
        return read_omi_trials(path, known)
    if kind == "csv":
        if scale is None:
            raise RatingsError("a ratings CSV needs its rating scale (e.g. --scale 1,9)")
        return read_trials_csv(path, scale, known)
    raise RatingsError(f"unknown ratings format {kind!r}: expected omi or csv")


def read_known_ids(path: str | os.PathLike) -> list[str]:
    """The face ids of a rated set: the `stimulus` (OMI's attribute_means.csv) or image column of a CSV."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [h.strip() for h in next(reader, [])]
            names = ("stimulus",) + IMAGE_COLUMNS
            column = next((i for i, h in enumerate(header) if h.lower() in names), None)
            if column is None:
                raise RatingsError(f"{path} has no face id column ({' / '.join(names)}); columns are {', '.join(header)}")
            return [row[column].strip() for row in reader if len(row) > column and row[column].strip()]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise RatingsError(f"cannot read the rated faces in {path}: {err}") from err


def omi_known_ids(path: str | os.PathLike) -> list[str] | None:
    """The stimuli of `attribute_means.csv` beside OMI's ratings zip (or in its folder), or None when it is absent."""
    path = Path(path)
    means = (path if path.is_dir() else path.parent) / "attribute_means.csv"
    return read_known_ids(means) if means.is_file() else None
