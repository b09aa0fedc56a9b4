"""Commands for the paper's studies, the report and the demo."""

from __future__ import annotations

import subprocess
from pathlib import Path

import click

from psyattr.cli import cli
from psyattr.cli.options import fail, framing_option, load_rated, rated_options
from psyattr.studies.registry import STUDIES


@cli.group("study")
def study_group() -> None:
    """The paper's studies: heatmaps, occlusion, expression pairs, base-model comparison, explanation quality."""


def _methods(ctx, param, value):
    return value.split(",") if value else None


# Options of one study only (by registry name); every study also gets the shared ones below.
STUDY_OPTIONS = {
    "expressions": [
        click.option("--pairs", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
                     help="Folder of happy/sad pairs (Yale subjectNN.happy.gif / .sad.gif, or KDEF names)."),
    ],
    "quality": [
        click.option("--steps", type=click.IntRange(1), default=30, show_default=True),
        click.option("--patch", type=click.IntRange(1), default=15, show_default=True),
        click.option("--methods", callback=_methods, metavar="M,...",
                     help="Comma-separated methods [default: all LRP composites, gradient, gradient x input, "
                          "saliency, smoothgrad, gradcam, random]."),
        click.option("--perturbation-seed", type=int, default=0, show_default=True,
                     help="Seed of the noise that replaces the patches."),
    ],
}


def _shared_options(study, command):
    if study.rated_faces:
        command = click.option("--limit", type=click.IntRange(1), default=study.default_limit,
                               show_default=study.default_limit is not None,
                               help="Use only the first N test faces" + ("." if study.default_limit else
                                                                          " [default: all]."))(command)
        command = click.option("--seed", type=int, default=None,
                               help="Seed of the 50/50 split for models without a run [default: 0]; a run's test "
                                    "faces are the ones it held out, and another seed is refused.")(command)
        command = rated_options(command)
    command = framing_option("How photos are framed for the models [default: as each model records].")(command)
    # Hidden where the study compares every composite; given there, it is refused rather than ignored.
    command = click.option("--composite", default="alpha2beta1", show_default=True, help="LRP composite.",
                           hidden=not study.composite)(command)
    command = click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)(command)
    command = click.option("--attribute", default="happy", show_default=True)(command)
    return click.option("--model", "model_specs", multiple=True, required=True,
                        help="A trained run folder or .keras file (repeat to compare models).")(command)


def _study_command(study):
    def command(model_specs, out, attribute, composite, framing, data_spec=None, scale=None, image_column=None,
                seed=None, limit=None, **options) -> None:
        from psyattr.studies.inputs import StudyInputs
        from psyattr.studies.registry import get_study

        entry = get_study(study.name)  # looked up when it runs: the registry's runner, not a copy
        if entry.one_model and len(model_specs) > 1:
            fail(f"study {entry.command} measures one model at a time: run it once per --model")
        if not entry.composite and composite != "alpha2beta1":
            fail(f"--composite does not apply to study {entry.command}, which compares every composite: choose with "
                 "--methods")
        if entry.composite:
            options["composite"] = composite
        if entry.rated_faces:
            options["limit"] = limit
        if entry.progress:
            options["progress"] = click.echo
        try:
            data = load_rated(data_spec, scale, image_column)[1] if entry.rated_faces else None
            inputs = StudyInputs.load(model_specs, data, seed, framing)
            result = entry.run(inputs, out, attribute=attribute, **options)
        except (ValueError, FileNotFoundError) as err:
            fail(str(err))
        for line in result.lines():
            click.echo(line)

    for option in reversed(STUDY_OPTIONS.get(study.name, [])):
        command = option(command)
    command = _shared_options(study, command)
    return study_group.command(study.command, help=study.help)(command)


for _study in STUDIES:
    _study_command(_study)


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--title", help="Page title.")
@click.option("--check/--no-check", default=True, help="Open the page in headless Chromium and screenshot it.")
def report(run_dir, title, check) -> None:
    """Write RUN_DIR/report.html with every study found in RUN_DIR (missing ones say why)."""
    from psyattr.studies.report import find_chromium, write_report

    path, missing = write_report(run_dir, title)
    click.echo(f"report: {path}")
    for section in missing:
        click.echo(f"missing section: {section}", err=True)
    if check and find_chromium():
        from psyattr.studies.browser import check_report

        try:
            result = check_report(path, run_dir / "report_screenshot.png")
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
            fail(f"{path} is written, but Chromium could not open it ({err}); --no-check skips the browser")
        click.echo(f"rendered in Chromium: {len(result['shown_sections'])} of {len(result['sections'])} sections with "
                   f"their results, {result['images']} images "
                   f"({result['broken_images']} broken); screenshot {result['screenshot']}")


@cli.command()
@click.option("--data", type=click.Path(file_okay=False, path_type=Path),
              help="OMI folder [default: $PSYATTR_DATA_DIR/omi, or the copy from `psyattr data fetch omi`].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("psyattr_demo"), show_default=True)
@click.option("--epochs", type=click.IntRange(1), default=120, show_default=True,
              help="Fine-tuning epochs (dense mode, cached features).")
@click.option("--occlusion-faces", type=click.IntRange(1), help="Occlude only the first N test faces [default: all].")
@click.option("--quality-faces", type=click.IntRange(1), default=12, show_default=True,
              help="Faces for the explanation-quality study.")
@click.option("--serve/--no-serve", default=True, help="Export the model and ask it over gRPC.")
def demo(data, out, epochs, occlusion_faces, quality_faces, serve) -> None:
    """Run the main job end to end on OMI: fine-tune, evaluate, explain, occlude, compare, export, serve, report."""
    from psyattr.checkpoints import ResumeError
    from psyattr.data.fetch import FetchError
    from psyattr.demo import run_demo

    try:
        run_demo(out, data, epochs, occlusion_faces, quality_faces, serve=serve, echo=click.echo)
    except (FetchError, ResumeError, ValueError, FileNotFoundError) as err:
        fail(str(err))
