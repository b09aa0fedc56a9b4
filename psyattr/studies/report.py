"""`psyattr report`: one HTML page (beside its PNGs) with every study found in a run folder."""

from __future__ import annotations

import datetime
import html
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, NamedTuple

from markdown_it import MarkdownIt

from psyattr import __version__
from psyattr.checkpoints import atomic_write_text
from psyattr.studies.registry import STUDIES
from psyattr.studies.summary import SUMMARY_FILE


class Section(NamedTuple):
    """One section of the report: its id, title, folder in the run, and the command that makes it."""

    id: str
    title: str
    folder: str
    command: str


GRID_COMMAND = "psyattr grid --out RUN/grid (or psyattr demo)"
SECTIONS: tuple[Section, ...] = (
    Section("table1", "Table 1: test error of the fine-tuned models", "grid", GRID_COMMAND),
    Section("learning_curves", "Learning curves (Fig. 3)", "grid", GRID_COMMAND),
    *(Section(study.name, study.title, study.folder, study.makes_it) for study in STUDIES),
)
GRID_SECTIONS = ("table1", "learning_curves")

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; padding-bottom: .2em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .9em; color: #444; margin-top: .3em; }
table { border-collapse: collapse; font-size: .9em; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: .25em .6em; } th { background: #f4f4f4; }
td.num { text-align: right; } .missing { background: #fff4e5; border-left: 4px solid #f0a020; padding: .6em 1em; }
nav a { margin-right: 1em; } .meta { color: #666; font-size: .85em; }
"""

# Marks every image as loaded or not, so that a headless browser can check the page as a reader sees it.
CHECK_SCRIPT = """
window.addEventListener('load', function () {
  var images = document.querySelectorAll('img'), broken = 0;
  images.forEach(function (img) {
    var ok = img.complete && img.naturalWidth > 0;
    img.setAttribute('data-loaded', ok ? 'yes' : 'no');
    if (!ok) { broken += 1; }
  });
  document.body.setAttribute('data-images', images.length);
  document.body.setAttribute('data-broken-images', broken);
});
"""


# A cell that holds a number (with a sign, a percent sign or a "± error") is right-aligned like a figure column.
_NUMBER = re.compile(r"^[+\-−]?\d[\d.,]*(e[+\-]?\d+)?%?( ± ([\d.,]+(e[+\-]?\d+)?%?|–))?$")
_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable("table")


def render_markdown(text: str) -> str:
    """Render the Markdown our studies and the grid write (headings, pipe tables, paragraphs) as HTML.

    Raw HTML in the text is escaped; headings become `h3` (the report's sections are `h2`); table cells that
    hold a number get class `num`.
    """
    tokens = _MARKDOWN.parse(text)
    for position, token in enumerate(tokens):
        if token.type in ("heading_open", "heading_close"):
            token.tag = "h3"
        elif token.type == "td_open" and _NUMBER.match(tokens[position + 1].content.strip()):
            token.attrJoin("class", "num")
    return _MARKDOWN.renderer.render(tokens, _MARKDOWN.options, {})


def _figure(src: str, caption: str) -> str:
    return (f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption[:120])}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _grid_folder(run_dir: Path) -> Path | None:
    for folder in (run_dir / "grid", run_dir):
        if (folder / "table1.md").exists():
            return folder
    return None


def _section_body(section: str, folder_name: str, run_dir: Path) -> tuple[str | None, str]:
    """(HTML body or None, the reason it is missing)."""
    if section in GRID_SECTIONS:
        grid = _grid_folder(run_dir)
        if grid is None:
            return None, f"no table1.md in {run_dir / 'grid'}: no fine-tuning grid has finished in this run"
        prefix = os.path.relpath(grid, run_dir)
        if section == "table1":
            return render_markdown((grid / "table1.md").read_text()), ""
        figure = grid / "fig3_learning_curves.png"
        if not figure.exists():
            return None, f"{figure} is missing"
        return _figure(f"{prefix}/{figure.name}" if prefix != "." else figure.name,
                       "Mean absolute error on the paper's 1..9 scale per epoch, on the training half (solid) and the "
                       "test half (dashed), for each base net and fine-tuning mode. The paper's Fig. 3 finds that "
                       "the age-based models learn faster."), ""
    folder = run_dir / folder_name
    summary_file = folder / SUMMARY_FILE
    if not summary_file.exists():
        return None, f"{summary_file} is missing: this study has not been run here"
    try:
        summary: dict[str, Any] = json.loads(summary_file.read_text())
    except (json.JSONDecodeError, OSError) as err:
        return None, f"{summary_file} is unreadable ({err})"
    parts = [f"<p>{html.escape(summary.get('text', ''))}</p>"]
    missing = [f["file"] for f in summary.get("figures", []) if not (folder / f["file"]).exists()]
    if missing:
        return None, f"figure(s) {', '.join(missing)} listed in {summary_file} are missing"
    if summary.get("table_md"):
        parts.append(render_markdown(summary["table_md"]))
    parts += [_figure(f"{folder_name}/{f['file']}", f["caption"]) for f in summary.get("figures", [])]
    return "\n".join(parts), ""


def write_report(run_dir: str | os.PathLike, title: str | None = None) -> tuple[Path, list[str]]:
    """Write `run_dir/report.html`; return its path and the ids of the sections that are missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    body, missing = [], []
    for section, heading, folder, command in SECTIONS:
        content, why = _section_body(section, folder, run_dir)
        body.append(f'<section id="{section}"><h2>{html.escape(heading)}</h2>')
        if content is None:
            missing.append(section)
            body.append(f'<div class="missing" data-missing="{section}">Missing: {html.escape(why)}. '
                        f"Make it with <code>{html.escape(command)}</code>.</div>")
        else:
            body.append(content)
        body.append("</section>")
    nav = " ".join(f'<a href="#{s}">{html.escape(h.split(":")[0])}</a>' for s, h, _, _ in SECTIONS)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title or 'psyattr report')}</title>
<style>{STYLE}</style><script>{CHECK_SCRIPT}</script></head>
<body><h1>{html.escape(title or 'psyattr report')}</h1>
<p class="meta">Run folder {html.escape(str(run_dir.resolve()))}; written {stamp} by psyattr {__version__}.
Heatmaps: red pixels raise the explained score, blue pixels lower it.</p>
<nav>{nav}</nav>
{''.join(body)}
</body></html>
"""
    path = run_dir / "report.html"
    atomic_write_text(path, page)
    return path, missing


def find_chromium() -> str | None:
    """The path of a Chromium (or Chrome) executable, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None
