"""Shared pieces of the command line: parameter types, data options and errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # the CLI imports TensorFlow only once a command runs
    from psyattr.distributed import Cluster

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
TASK = click.Choice(["age", "gender"])
# The registered framings (psyattr.faces.framing); kept here as names so that --help needs no import.
FRAMING = click.Choice(["utkface", "omi", "none"])


class DataSpec(click.ParamType):
    """A `format:PATH` dataset argument, e.g. `utkface:../data/utkface_part1`."""

    name = "FORMAT:PATH"

    def __init__(self, formats: tuple[str, ...]):
        self.formats = formats

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        kind, sep, path = str(value).partition(":")
        if not sep or kind not in self.formats:
            self.fail(f"{value!r} is not FORMAT:PATH with FORMAT one of {', '.join(self.formats)}", param, ctx)
        if not Path(path).exists():
            self.fail(f"{kind} data folder not found: {path}", param, ctx)
        return kind, Path(path)


def framing_option(help_text: str):
    """The --framing option: how photos are framed for the model (None when not given: the model's own)."""
    return click.option("--framing", type=FRAMING, default=None, help=help_text)


def dropout_option(function):
    """The --dropout option of training commands."""
    return click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.5, show_default=True,
                        help="Rate of drop6 and drop7 while training.")(function)


def precision_option(function):
    """The --precision option of training commands (the names of psyattr.models.precision.PRECISIONS)."""
    return click.option("--precision", type=click.Choice(["auto", "float32", "mixed_bfloat16", "mixed_float16",
                                                          "float64"]),
                        default="auto", show_default=True,
                        help="auto: mixed bfloat16 where the hardware has it; float64 to check numerics.")(function)


def distributed_option(function):
    """--distributed (train on the workers TF_CONFIG names; implied where it names several) and --join-timeout."""
    function = click.option("--join-timeout", type=click.FloatRange(1), default=600, show_default=True,
                            metavar="SECONDS", help="How long a worker waits for the others to start.")(function)
    return click.option("--distributed", is_flag=True,
                        help="Train on the workers TF_CONFIG names (every worker runs this same command with its "
                             "own TF_CONFIG; the run folder must be one shared folder). Implied where TF_CONFIG "
                             "names several workers.")(function)


def other_worker_done(cluster: Cluster | None, out: Path) -> bool:
    """On a worker other than the chief, say that it is done and where the chief wrote the run."""
    from psyattr.distributed import writes_run

    if writes_run(cluster):
        return False
    click.echo(f"worker {cluster.index} of {cluster.workers} done: worker 0 wrote the run to {out}")
    return True


def start_cluster(distributed: bool, timeout: float):
    """This process's part of the TF_CONFIG cluster (None for a one-worker run), or a one-line error."""
    from psyattr.distributed import DistributedError, join_cluster

    try:
        return join_cluster(distributed, timeout)
    except DistributedError as err:
        fail(str(err))


def _set_max_pixels(ctx, param, value):
    if value is not None:
        from PIL import Image

        from psyattr.data.images import MAX_PIXELS_ENV

        # psyattr's limit and PIL's safety check are both set for this command, and restored when it ends (a
        # command invoked from Python must not change the limits of what runs after it).
        saved_env, saved_pil = os.environ.get(MAX_PIXELS_ENV), Image.MAX_IMAGE_PIXELS

        def restore() -> None:
            Image.MAX_IMAGE_PIXELS = saved_pil
            if saved_env is None:
                os.environ.pop(MAX_PIXELS_ENV, None)
            else:
                os.environ[MAX_PIXELS_ENV] = saved_env

        ctx.call_on_close(restore)
        os.environ[MAX_PIXELS_ENV] = str(value)
        Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, value)
    return value


max_pixels_option = click.option(
    "--max-pixels", type=click.IntRange(1), expose_value=False, callback=_set_max_pixels, envvar="PSYATTR_MAX_PIXELS",
    help="Refuse images with more pixels than this [default: 50,000,000; large JPEGs are decoded reduced].")


def fail(message: str) -> None:
    """Stop the command with a one-line error."""
    raise click.ClickException(message)


def report_skipped(total: int, done: int, skipped: list[tuple[Path, str]]) -> None:
    """Name each image a batch command skipped, and stop when none of the `total` went through."""
    for path, why in skipped:
        click.echo(f"skipped {path}: {why}", err=True)
    if not done:
        fail(f"none of the {total} images could be read")


class RatedDataSpec(click.ParamType):
    """A rated data set as FORMAT:PATH: omi:FOLDER, 10k:FOLDER or csv:FILE."""

    name = "FORMAT:PATH"

    def convert(self, value, param, ctx):
        if isinstance(value, dict):
            return value
        kind, sep, path = str(value).partition(":")
        if not sep or kind not in ("omi", "10k", "csv"):
            self.fail(f"{value!r} is not FORMAT:PATH with FORMAT one of omi, 10k, csv", param, ctx)
        if not Path(path).exists():
            self.fail(f"{kind} data not found: {path}", param, ctx)
        return {"kind": kind, "path": str(Path(path).resolve())}


class TrialRatingsSpec(click.ParamType):
    """Single ratings as FORMAT:PATH: omi:ZIP_OR_FOLDER or csv:FILE."""

    name = "FORMAT:PATH"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        kind, sep, path = str(value).partition(":")
        if not sep or kind not in ("omi", "csv"):
            self.fail(f"{value!r} is not FORMAT:PATH with FORMAT one of omi, csv", param, ctx)
        if not Path(path).exists():
            self.fail(f"{kind} ratings not found: {path}", param, ctx)
        return kind, Path(path)


def parse_scale(text: str | None) -> tuple[float, float] | None:
    """'1,9' to (1.0, 9.0)."""
    if text is None:
        return None
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        fail(f"--scale must be LOW,HIGH (e.g. 1,9), got {text!r}")
    return low, high


def rated_options(command):
    """The options that say where rated faces are."""
    command = click.option("--image-column", help="Image-path column of a csv data set.")(command)
    command = click.option("--scale", help="Rating scale LOW,HIGH of a csv data set, e.g. 1,9.")(command)
    return click.option("--data", "data_spec", type=RatedDataSpec(), required=True,
                        help="Rated faces: omi:FOLDER, 10k:FOLDER or csv:FILE.")(command)


def load_rated(data_spec: dict, scale: str | None, image_column: str | None):
    """Read the rated data set named on the command line."""
    from psyattr.data.rated import read_rated

    spec = {**data_spec, "scale": parse_scale(scale), "image_column": image_column}
    return spec, read_rated(spec["kind"], spec["path"], spec["scale"], image_column)
