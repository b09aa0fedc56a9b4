"""Commands that find and fetch data sets."""

from __future__ import annotations

from pathlib import Path

import click

from psyattr.cli import cli
from psyattr.cli.options import fail


@cli.group()
def data() -> None:
    """Find and fetch the face data sets."""


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
