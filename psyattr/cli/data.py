"""Commands on the data sets: fetch them, measure how well their raters agree."""

from __future__ import annotations

from pathlib import Path

import click

from psyattr.cli import cli
from psyattr.cli.options import TrialRatingsSpec, fail, parse_scale


@cli.group()
def data() -> None:
    """Find and fetch the face data sets, and measure how well their raters agree."""


@data.command("fetch")
@click.argument("name", type=click.Choice(["omi"]))
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path), envvar="PSYATTR_DATA_HOME",
              help="Where to put it [default: ~/.cache/psyattr/data].")
@click.option("--from", "source", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Copy from a local folder instead of downloading.")
@click.option("--progress/--no-progress", default=True)
def fetch(name, dest, source, progress) -> None:
    """Fetch a data set (OMI: 1,004 faces with ratings, CC BY-NC-SA 4.0, cite Peterson et al. 2022)."""
    from psyattr.data.fetch import FetchError, fetch_omi

    try:
        folder = fetch_omi(dest, source, progress)
    except FetchError as err:
        fail(str(err))
    click.echo(f"OMI is in {folder} (pass --data {folder}, or set PSYATTR_DATA_DIR to {folder.parent})")


@data.command("reliability")
@click.option("--ratings", "ratings_spec", type=TrialRatingsSpec(), required=True,
              help="Single ratings: omi:ZIP_OR_FOLDER (attribute_ratings.zip) or csv:FILE (image, attribute, rating[, rater]).")
@click.option("--scale", help="Rating scale LOW,HIGH of a csv file, e.g. 1,9.")
@click.option("--faces", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV of the rated faces (column stimulus or image); ratings of other faces are left out "
                   "[default for omi: attribute_means.csv beside the ratings].")
@click.option("--all-faces", is_flag=True, help="Keep the ratings of every face, whether in the rated set or not.")
@click.option("--splits", type=click.IntRange(min=1), default=50, show_default=True, help="Random split-halves.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--attribute", "attributes", multiple=True, help="Attribute to measure (repeatable) [default: all].")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the table: FILE.csv or FILE.json.")
def reliability(ratings_spec, scale, faces, all_faces, splits, seed, attributes, out) -> None:
    """How well raters agree: split-half r of mean ratings per attribute, its 95 % interval and Spearman-Brown."""
    from psyattr.data.rated import RatingsError
    from psyattr.data.trials import omi_known_ids, read_known_ids, read_trials
    from psyattr.reliability import split_half_reliability, write_reliability

    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        fail(f"--out must end in .csv or .json, got {out.name}")
    if faces is not None and all_faces:
        fail("--faces and --all-faces contradict each other: pass one")
    kind, path = ratings_spec
    try:
        known = None if all_faces else read_known_ids(faces) if faces else omi_known_ids(path) if kind == "omi" else None
        trials = read_trials(kind, path, parse_scale(scale), known)
        table = split_half_reliability(trials, attributes or None, splits, seed)
    except RatingsError as err:
        fail(str(err))
    if known is not None:
        table.notes.append(f"faces kept: the {len(set(known)):,} of {faces or 'attribute_means.csv'}")
    click.echo(_format_table(table))
    for note in table.notes:
        click.echo(f"note: {note}")
    for problem in table.problems:
        click.echo(f"problem: {problem}", err=True)
    if out is not None:
        write_reliability(table, out)
        click.echo(f"written: {out}")


def _format_table(table) -> str:
    """The reliability table as aligned text."""
    header = ("attribute", "faces", "ratings/face", "split-half r", "95 % interval", "Spearman-Brown")
    rows = [(r.attribute, str(r.faces), f"{r.median_ratings:g}" + (f" ({r.median_raters:g} raters)" if r.median_raters else ""),
             f"{r.r:.3f}", f"{r.low:.3f} .. {r.high:.3f}", f"{r.spearman_brown:.3f}") for r in table.rows]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
                     for row in [header, *rows])
