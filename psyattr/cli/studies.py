"""Commands for the paper's studies, the report and the demo."""

from __future__ import annotations

import subprocess
from pathlib import Path

import click

from psyattr.cli import cli
from psyattr.cli.options import fail, load_rated, rated_options


@cli.group()
def study() -> None:
    """The paper's studies: heatmaps, occlusion, expression pairs, base-model comparison, explanation quality."""


def study_options(command):
    """Options shared by the studies on rated faces."""
    command = click.option("--composite", default="alpha2beta1", show_default=True, help="LRP composite.")(command)
    command = click.option("--limit", type=click.IntRange(1), help="Use only the first N test faces.")(command)
    command = click.option("--seed", type=int, default=0, show_default=True, help="Seed of the 50/50 split.")(command)
    command = click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)(command)
    command = click.option("--attribute", default="happy", show_default=True)(command)
    command = rated_options(command)
    return click.option("--model", "model_specs", multiple=True, required=True,
                        help="A trained run folder or .keras file (repeat to compare models).")(command)


def _study_inputs(model_specs, data_spec, scale, image_column, seed, limit):
    from psyattr.studies.common import held_out_faces, load_study_models

    _, data = load_rated(data_spec, scale, image_column)
    models = load_study_models(model_specs)
    return models, data, held_out_faces(data, seed, limit)


@study.command("heatmaps")
@study_options
def study_heatmaps(model_specs, data_spec, scale, image_column, attribute, out, seed, limit, composite) -> None:
    """Heatmap grid of test faces for all models on one colour scale."""
    from psyattr.studies.heatmaps import heatmap_study

    try:
        models, data, test = _study_inputs(model_specs, data_spec, scale, image_column, seed, limit or 6)
        heatmap_study(models, data, [attribute], test, out, composite)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    click.echo(f"heatmaps in {out}")


@study.command("occlusion")
@study_options
def study_occlusion(model_specs, data_spec, scale, image_column, attribute, out, seed, limit, composite) -> None:
    """Cover the mouth, the right eye and both eyes; score change per region with 95% CIs."""
    from psyattr.studies.occlusion import occlusion_study

    try:
        models, data, test = _study_inputs(model_specs, data_spec, scale, image_column, seed, limit)
        results = occlusion_study(models, data, attribute, test, out, composite)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    for label, result in results["models"].items():
        for region, r in result["regions"].items():
            click.echo(f"{label:24s} {region:10s} {attribute} change {r['mean_change']:+7.2f} "
                       f"[{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}]  relevance in region {r['relevance_share_before']:.1%}"
                       f" -> {r['relevance_share_after']:.1%}")
    click.echo(f"{results['faces']} faces; figures and table in {out}")


@study.command("expressions")
@click.option("--model", "model_specs", multiple=True, required=True, help="A trained run folder or .keras file.")
@click.option("--pairs", "folder", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Folder of happy/sad pairs (Yale subjectNN.happy.gif / .sad.gif, or KDEF names).")
@click.option("--attribute", default="happy", show_default=True)
@click.option("--composite", default="alpha2beta1", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
def study_expressions(model_specs, folder, attribute, composite, out) -> None:
    """The same people happy and sad: scores, heatmaps and relevance share per face region."""
    from psyattr.studies.common import load_study_models
    from psyattr.studies.expressions import expression_study

    try:
        results = expression_study(load_study_models(model_specs), folder, out, attribute, composite)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    for label, result in results["models"].items():
        for state in ("happy", "sad"):
            shares = result[state]["shares"]
            click.echo(f"{label:24s} {state:5s} score {result[state]['mean_score']:6.2f}  mouth {shares['mouth']:.1%}  "
                       f"eyes {shares['eyes']:.1%}  cheeks {shares['cheeks']:.1%}  eyebrows {shares['eyebrows']:.1%}")
    click.echo(f"{results['pairs']} pairs; figure and table in {out}")


@study.command("compare")
@study_options
def study_compare(model_specs, data_spec, scale, image_column, attribute, out, seed, limit, composite) -> None:
    """Compare models (e.g. age- vs gender-based): relevance per region, spread, error, learning speed."""
    from psyattr.studies.comparison import comparison_study

    try:
        models, data, test = _study_inputs(model_specs, data_spec, scale, image_column, seed, limit or 64)
        results = comparison_study(models, data, attribute, test, out, composite)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    for label, m in results["models"].items():
        click.echo(f"{label:24s} MAE {m['mae']:.2f}  spread {m['spread']:.1%}  "
                   + "  ".join(f"{r} {v:.1%}" for r, v in m["shares"].items()))
    click.echo(results["verdict"])


@study.command("quality")
@study_options
@click.option("--steps", type=click.IntRange(1), default=30, show_default=True)
@click.option("--patch", type=click.IntRange(1), default=15, show_default=True)
@click.option("--methods", help="Comma-separated methods [default: all LRP composites, gradient x input, saliency, "
                                "smoothgrad, gradcam, random].")
def study_quality(model_specs, data_spec, scale, image_column, attribute, out, seed, limit, composite, steps, patch,
                  methods) -> None:
    """Region perturbation and AOPC of every explanation method (higher is more faithful)."""
    from psyattr.studies.faithfulness import faithfulness_study

    if len(model_specs) > 1:
        fail("study quality measures one model at a time: run it once per --model")
    if composite != "alpha2beta1":
        fail("--composite does not apply to study quality, which compares every composite: choose with --methods")
    try:
        models, data, test = _study_inputs(model_specs, data_spec, scale, image_column, seed, limit or 16)
        numbers = faithfulness_study(models[0], data, attribute, test, out, methods.split(",") if methods else None,
                                     steps, patch, seed, progress=click.echo)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    for name, value in sorted(numbers.items(), key=lambda item: -item[1]["aopc"]):
        click.echo(f"{name:28s} AOPC {value['aopc']:8.4f} ± {value['se']:.4f}")


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
