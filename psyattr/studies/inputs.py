"""What the studies feed their models: the faces the models held out, and photos framed by each model's framing.

A study of training runs uses exactly the faces the runs held out (the ids in each run's `split.json`); models
that are bare `.keras` files use the test half of the seeded 50/50 split. Each model sees every photo framed by
its own framing, and the face regions (occlusion, relevance per region) are drawn in that frame; each framing's
inputs are made once and shared by every model and study that uses it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from psyattr.data.images import ImageError
from psyattr.data.rated import RatedFaces
from psyattr.data.splits import half_split
from psyattr.faces.framing import Framing, frame_file
from psyattr.faces.landmarks import Landmarks
from psyattr.faces.regions import FaceRegions, build_regions
from psyattr.faces.sources import item_landmarks, regions_for_file
from psyattr.runs import SPLIT_FILE
from psyattr.studies.models import StudyModel, load_study_models

log = logging.getLogger(__name__)
DEFAULT_SEED = 0  # the split seed of models that are bare .keras files, as training's default


@dataclasses.dataclass(frozen=True)
class HeldOutFaces:
    """The faces a study uses: positions in the data, their ids, how they were chosen, and what to say about it.

    `source` says which faces they are ("faces that run X held out in training ..."); `of` is how many there were
    before `first` kept only some.
    """

    indices: np.ndarray
    ids: tuple[str, ...]
    source: str
    note: str | None = None
    of: int | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def first(self, limit: int | None) -> HeldOutFaces:
        """The first `limit` of these faces (all of them for None)."""
        if not limit or limit >= len(self):
            return self
        return dataclasses.replace(self, indices=self.indices[:limit], ids=self.ids[:limit], of=self.of or len(self))

    def describe(self) -> str:
        """One or two sentences for a study's summary."""
        which = f"the first {len(self)} of the {self.of}" if self.of else f"the {len(self)}"
        return f"Test faces: {which} {self.source}." + (f" {self.note}" if self.note else "")

    def to_summary(self) -> dict:
        """The faces as summary.json records them."""
        return {"count": len(self), "of": self.of or len(self), "source": self.source, "note": self.note,
                "ids": list(self.ids)}


def _part(entry: StudyModel, data: RatedFaces, seed: int | None) -> tuple[list[str], str | None, int | None]:
    """The ids of the faces one model held out, and the run they come from or the seed of the half split."""
    run = entry.run
    if run is not None:
        run.check_seed(seed)
        if seed is None or (run.path / SPLIT_FILE).exists():
            return run.test_ids, run.name, None
    used = DEFAULT_SEED if seed is None else seed
    return [data.ids[i] for i in half_split(len(data), used)[1]], None, used


def _source(runs: Sequence[str], seeds: Sequence[int]) -> str:
    parts = []
    if runs:
        parts.append(f"faces that run {runs[0]} held out in training (its {SPLIT_FILE})" if len(runs) == 1 else
                     f"faces that runs {', '.join(runs[:-1])} and {runs[-1]} held out in training (their {SPLIT_FILE})")
    parts += [f"faces of the test half of the 50/50 split (seed {seed})" for seed in seeds]
    return "; ".join(parts)


def held_out_faces(models: Sequence[StudyModel], data: RatedFaces, seed: int | None = None) -> HeldOutFaces:
    """The faces that every model held out: its run's test ids, or the seeded half split for a bare model.

    An explicit `seed` that is not a run's own is refused (its split would mix training and test faces); a run
    made before runs recorded their split is split again with the `seed` given. When the models held out
    different faces, the faces all of them held out are used and the note says so.
    """
    if not models:
        raise ValueError("give at least one model")
    parts = [(entry.label, *_part(entry, data, seed)) for entry in models]
    runs = list(dict.fromkeys(run for _, _, run, _ in parts if run is not None))
    seeds = list(dict.fromkeys(used for _, _, _, used in parts if used is not None))
    first = parts[0][1]
    note = None
    if any(set(ids) != set(first) for _, ids, _, _ in parts[1:]):
        common = set.intersection(*(set(ids) for _, ids, _, _ in parts))
        counts = ", ".join(f"{label}: {len(ids)}" for label, ids, _, _ in parts)
        if not common:
            raise ValueError(f"the models share no held-out face ({counts}): each one's test faces are another's "
                             "training faces; study them one at a time")
        first = [item for item in first if item in common]
        note = (f"The models held out different faces ({counts}): the {len(first)} faces that all of them held out "
                "are used.")
    return HeldOutFaces(data.index_of(first), tuple(first), _source(runs, seeds), note)


@dataclasses.dataclass(frozen=True)
class _Framed:
    image: np.ndarray  # the model input, uint8 (227, 227, 3)
    landmarks: Landmarks | None
    notes: tuple[str, ...]


class FramedPhotos:
    """Photos framed once per framing, with their face regions in the model-input frame, for every model and study.

    `landmarks(position)` gives a photo's own landmarks (a data set's), or None: the detector finds them.
    """

    def __init__(self, keys: Sequence[str], paths: Sequence[str | os.PathLike],
                 landmarks: Callable[[int], Landmarks | None] | None = None, detector=None):
        if len(keys) != len(paths):
            raise ValueError(f"got {len(keys)} names for {len(paths)} photos")
        self.keys = list(keys)
        self.paths = [Path(p) for p in paths]
        self._landmarks = landmarks or (lambda position: None)
        self._detector = detector
        self._framed: dict[tuple[Framing, int], _Framed | str] = {}
        self._regions: dict[tuple[Framing, int], FaceRegions | None] = {}

    @classmethod
    def of_rated(cls, data: RatedFaces, detector=None) -> FramedPhotos:
        """Every face of a rated data set (positions are the data's), framed by its own landmarks where it has them."""
        return cls(data.ids, data.paths, lambda position: item_landmarks(data, position), detector)

    def __len__(self) -> int:
        return len(self.paths)

    def _frame(self, framing: Framing, position: int) -> _Framed | str:
        key = (framing, position)
        if key not in self._framed:
            try:
                face = frame_file(self.paths[position], framing, self._landmarks(position), self._detector)
            except (ImageError, FileNotFoundError, IsADirectoryError) as err:
                self._framed[key] = str(err)
            else:
                self._framed[key] = _Framed(np.asarray(face.model_input(), np.uint8), face.input_landmarks(),
                                            face.notes)
        return self._framed[key]

    def _face_regions(self, framing: Framing, position: int) -> FaceRegions | None:
        key = (framing, position)
        if key not in self._regions:
            framed = self._frame(framing, position)
            if isinstance(framed, str):
                self._regions[key] = None
            elif framed.landmarks is not None:
                self._regions[key] = build_regions(framed.landmarks)
            else:
                # Framed as given (framing none) without landmarks of its own: the detector finds the face.
                self._regions[key] = regions_for_file(self.paths[position], self._detector, framing)
        return self._regions[key]

    def reason(self, framings: Sequence[Framing], position: int, regions: bool = False) -> str | None:
        """Why the photo at `position` cannot be used under every one of `framings` (with regions, if asked); None if it can."""
        for framing in dict.fromkeys(framings):
            framed = self._frame(framing, int(position))
            if isinstance(framed, str):
                return framed
            if regions and self._face_regions(framing, int(position)) is None:
                return f"no face landmarks found in {self.paths[int(position)].name} ({framing.name} framing)"
        return None

    def usable(self, framings: Sequence[Framing], positions: Sequence[int],
               regions: bool = False) -> tuple[list[int], list[str]]:
        """The positions framed under every framing (with face regions, if asked), and "name (reason)" of the rest."""
        kept, skipped = [], []
        for position in positions:
            why = self.reason(framings, position, regions)
            if why is None:
                kept.append(int(position))
            else:
                skipped.append(f"{self.keys[int(position)]} ({why})")
        return kept, skipped

    def inputs(self, framing: Framing, positions: Sequence[int]) -> np.ndarray:
        """The model inputs `(N, 227, 227, 3)` float32 0..255 of photos that `usable` kept under `framing`."""
        return np.stack([self._usable(framing, p).image for p in positions]).astype(np.float32)

    def regions(self, framing: Framing, positions: Sequence[int]) -> list[FaceRegions]:
        """The face regions in `framing`'s model-input frame of photos that `usable` kept with regions."""
        found = [self._face_regions(framing, int(p)) for p in positions]
        missing = [self.keys[int(p)] for p, r in zip(positions, found) if r is None]
        if missing:
            raise ValueError(f"no face regions for {', '.join(missing[:5])}: ask usable(..., regions=True) first")
        return found

    def notes(self, framing: Framing, positions: Sequence[int]) -> list[str]:
        """What framing noticed about these photos ("name: note"), e.g. several faces found."""
        return [f"{self.keys[p]}: {note}" for p in positions for note in self._usable(framing, p).notes]

    def _usable(self, framing: Framing, position: int) -> _Framed:
        framed = self._frame(framing, int(position))
        if isinstance(framed, str):
            raise ValueError(f"{self.keys[int(position)]} could not be framed ({framed}): ask usable() first")
        return framed


@dataclasses.dataclass
class UsableFaces:
    """The held-out faces that every model's framing could frame: their inputs and regions per model."""

    indices: list[int]
    ids: list[str]
    skipped: list[str]
    photos: FramedPhotos

    def __len__(self) -> int:
        return len(self.indices)

    def images(self, entry: StudyModel, rows: slice | None = None) -> np.ndarray:
        """The faces framed as `entry` expects, `(N, 227, 227, 3)` float32 0..255."""
        return self.photos.inputs(entry.framing, self.indices[rows or slice(None)])

    def regions(self, entry: StudyModel, rows: slice | None = None) -> list[FaceRegions]:
        """The faces' regions in `entry`'s model-input frame."""
        return self.photos.regions(entry.framing, self.indices[rows or slice(None)])


@dataclasses.dataclass
class StudyInputs:
    """What a study works on: its models and, for studies of rated faces, the data, its held-out faces and photos."""

    models: list[StudyModel]
    data: RatedFaces | None = None
    held_out: HeldOutFaces | None = None
    photos: FramedPhotos | None = None

    @classmethod
    def load(cls, model_specs: Sequence[str | os.PathLike], data: RatedFaces | None = None, seed: int | None = None,
             framing: str | Framing | None = None) -> StudyInputs:
        """Load the models (framed as each records, or all by `framing`) and, with `data`, choose their test faces."""
        models = load_study_models(model_specs, framing)
        return cls.of(models, data, seed) if data is not None else cls(models)

    @classmethod
    def of(cls, models: Sequence[StudyModel], data: RatedFaces, seed: int | None = None,
           detector=None) -> StudyInputs:
        """Inputs for `models` studied on `data`: the faces they all held out, framed lazily per framing."""
        models = list(models)
        return cls(models, data, held_out_faces(models, data, seed), FramedPhotos.of_rated(data, detector))

    def with_models(self, models: Sequence[StudyModel]) -> StudyInputs:
        """The same data, faces and framed photos for other models (the faces are not chosen again)."""
        return dataclasses.replace(self, models=list(models))

    @property
    def framings(self) -> list[Framing]:
        """The models' framings, each once, in the models' order."""
        return list(dict.fromkeys(entry.framing for entry in self.models))

    def framing_text(self) -> str:
        """How the photos were framed, for a study's summary."""
        if len(self.framings) == 1:
            return f"Photos framed by the models' {self.framings[0].name} framing."
        own = ", ".join(f"{entry.label}: {entry.framing.name}" for entry in self.models)
        return f"Each model sees the photos framed by its own framing ({own})."

    def faces(self, limit: int | None = None, regions: bool = False) -> tuple[HeldOutFaces, UsableFaces]:
        """The first `limit` held-out faces, and those that every model's framing could frame (with regions)."""
        if self.data is None or self.held_out is None or self.photos is None:
            raise ValueError("this study needs rated faces: give the data the models were trained on")
        chosen = self.held_out.first(limit)
        kept, skipped = self.photos.usable(self.framings, chosen.indices, regions)
        if skipped:
            log.warning("left out %d face(s): %s", len(skipped), "; ".join(skipped[:10]))
        if not kept:
            raise ValueError(f"none of the {len(chosen)} test faces could be used"
                             + (" (with face regions)" if regions else "") + f": {'; '.join(skipped[:5])}")
        return chosen, UsableFaces(kept, [self.data.ids[i] for i in kept], skipped, self.photos)


__all__ = ["FramedPhotos", "HeldOutFaces", "StudyInputs", "UsableFaces", "held_out_faces"]
