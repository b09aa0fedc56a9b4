"""The `psyattr` command line: thin click commands over the library, one module per area."""

from __future__ import annotations

import logging
import sys

import click

from psyattr import __version__
from psyattr.cli.options import CONTEXT, fail


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="psyattr")
@click.option("-v", "--verbose", is_flag=True, help="Also log the details of the libraries underneath (TensorFlow, gRPC).")
def cli(verbose: bool) -> None:
    """Predict how people judge a face and explain each prediction with a heatmap."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("psyattr").setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        from psyattr.cli.quiet import quiet_native_logs, quiet_python_logs

        quiet_native_logs()
        quiet_python_logs()


def main() -> None:
    """Entry point of the `psyattr` console script."""
    cli(prog_name="psyattr")


# Importing the command modules registers their commands on the group.
from psyattr.cli import base, data, explain, serving, studies, transfer  # noqa: E402,F401

__all__ = ["cli", "fail", "main"]

if __name__ == "__main__":
    sys.exit(main())
