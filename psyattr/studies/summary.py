"""What every study returns and writes for the report: a typed result, and its `summary.json`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

from psyattr.checkpoints import atomic_write_text

SUMMARY_FILE = "summary.json"


@dataclasses.dataclass(frozen=True)
class Figure:
    """A figure a study wrote into its folder, and its caption in the report."""

    file: str
    caption: str


@dataclasses.dataclass(kw_only=True)
class StudyResult:
    """The part every study's result shares: where its files are, what it shows, and its figures.

    Each study's result adds its numbers as attributes, and says how they go into a table (`table_markdown`),
    into summary.json (`numbers`) and onto the terminal (`lines`).
    """

    study: ClassVar[str]  # the name in psyattr.studies.registry
    out_dir: Path
    text: str
    figures: tuple[Figure, ...]

    @property
    def title(self) -> str:
        """The study's title, as the registry names it."""
        from psyattr.studies.registry import get_study

        return get_study(self.study).title

    def table_markdown(self) -> str | None:
        """The study's table as Markdown, or None."""
        return None

    def numbers(self) -> dict[str, Any]:
        """The study's numbers as plain JSON values."""
        return {}

    def lines(self) -> list[str]:
        """What the command prints when the study is done."""
        return [f"{self.title}: figures and table in {self.out_dir}"]

    def to_summary(self) -> dict[str, Any]:
        """Everything the report needs, as plain JSON values: title, text, figures, table and numbers."""
        return {"title": self.title, "text": self.text,
                "figures": [dataclasses.asdict(figure) for figure in self.figures],
                "table_md": self.table_markdown(), "numbers": self.numbers()}

    def write_summary(self) -> Path:
        """Write `summary.json` into the study's folder (atomically) and return its path."""
        path = Path(self.out_dir) / SUMMARY_FILE
        atomic_write_text(path, json.dumps(self.to_summary(), indent=2, default=_plain))
        return path


def _plain(value: Any) -> Any:
    # NumPy scalars and arrays, tuples in dataclasses: JSON's plain types.
    if hasattr(value, "tolist"):
        return value.tolist()
    return float(value)


__all__ = ["Figure", "SUMMARY_FILE", "StudyResult"]
