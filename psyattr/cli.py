"""The `psyattr` command line: thin click commands over the library."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from psyattr import __version__

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
TASK = click.Choice(["age", "gender"])


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


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="psyattr")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def cli(verbose: bool) -> None:
    """Predict how people judge a face and explain each prediction with a heatmap."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("psyattr").setLevel(logging.INFO)


def fail(message: str) -> None:
    """Stop the command with a one-line error."""
    raise click.ClickException(message)


@cli.command("import-caffe")
@click.argument("prototxt", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("caffemodel", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--task", type=TASK, required=True, help="Which Levi-Hassner net the files hold.")
@click.option("--mean", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="mean.binaryproto.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Output .keras file.")
def import_caffe(prototxt: Path, caffemodel: Path, task: str, mean: Path | None, out: Path) -> None:
    """Convert a Levi-Hassner Caffe model (deploy PROTOTXT + binary CAFFEMODEL) to a Keras model."""
    from psyattr.checkpoints import atomic_save_model
    from psyattr.models.caffe import CaffeImportError, load_caffe

    if out.suffix != ".keras":
        fail(f"--out must end in .keras, got {out.name}")
    try:
        model = load_caffe(prototxt, caffemodel, task, mean)
    except CaffeImportError as err:
        fail(str(err))
    atomic_save_model(model, out)
    click.echo(f"wrote {out} ({model.count_params():,} parameters, {task} net)")


@cli.command()
@click.option("--task", type=TASK, required=True)
@click.option("--data", "data", type=DataSpec(("utkface", "adience")), multiple=True, required=True,
              help="Training data as FORMAT:PATH (utkface or adience); repeat to combine.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Run folder.")
@click.option("--epochs", type=click.IntRange(1), default=30, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=50, show_default=True)
@click.option("--learning-rate", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True)
@click.option("--lr-step-epochs", type=click.IntRange(1), default=12, show_default=True,
              help="Multiply the learning rate by 0.1 every this many epochs.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--precision", type=click.Choice(["auto", "float32", "mixed_bfloat16", "mixed_float16"]),
              default="auto", show_default=True, help="auto: mixed bfloat16 where the hardware has it.")
@click.option("--limit", type=click.IntRange(3), help="Use only this many images (quick trials).")
@click.option("--keep-checkpoints", type=click.IntRange(0), default=3, show_default=True,
              help="Newest epoch checkpoints kept (0 keeps all).")
@click.option("--resume", is_flag=True, help="Continue the run in --out after an interruption.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), envvar="PSYATTR_CACHE_DIR",
              help="Where decoded images are cached [default: ~/.cache/psyattr].")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
def pretrain(task, data, out, epochs, batch_size, learning_rate, lr_step_epochs, seed, precision, limit,
             keep_checkpoints, resume, cache_dir, progress) -> None:
    """Train an age or gender base net with Levi & Hassner's recipe (checkpoints every epoch)."""
    from psyattr.checkpoints import ResumeError
    from psyattr.data.readers import read_labelled_faces
    from psyattr.pretrain import PretrainConfig
    from psyattr.pretrain import pretrain as run_pretrain

    try:
        records = read_labelled_faces(data)
        config = PretrainConfig(task, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                                lr_step_epochs=lr_step_epochs, seed=seed, precision=precision, limit=limit)
        metrics = run_pretrain(records, out, config, resume=resume, cache_dir=cache_dir,
                               keep_checkpoints=keep_checkpoints, progress=progress)
    except (ResumeError, ValueError, FileNotFoundError) as err:
        fail(str(err))
    click.echo(json.dumps(metrics.get("test", {}), indent=2))
    click.echo(f"model: {out / 'model.keras'}; metrics: {out / 'metrics.json'}; "
               f"confusion matrix: {out / 'confusion_matrix.png'}")


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


@cli.command()
@click.option("--base", required=True, help="Base net: age or gender (shipped weights), age:PRESET, or a .keras file.")
@click.option("--mode", type=click.Choice(["dense", "full"]), required=True,
              help="dense: train fc6..fc8 on cached features; full: train the whole net.")
@click.option("--attribute", "attributes", multiple=True, required=True,
              help="Attribute to learn (repeat for several): a column, or attractive/happy/confident/intelligent.")
@rated_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Run folder.")
@click.option("--epochs", type=click.IntRange(1), default=40, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--learning-rate", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the 50/50 split and training.")
@click.option("--resume", is_flag=True, help="Continue the run in --out after an interruption.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), envvar="PSYATTR_CACHE_DIR")
@click.option("--progress/--no-progress", default=True)
def train(base, mode, attributes, data_spec, scale, image_column, out, epochs, batch_size, learning_rate, seed, resume,
          cache_dir, progress) -> None:
    """Fine-tune a base net to human ratings (the paper's SGD, Nesterov momentum, 50/50 split)."""
    from psyattr.checkpoints import ResumeError
    from psyattr.train import TrainConfig, train_regressor

    try:
        spec, data = load_rated(data_spec, scale, image_column)
        config = TrainConfig(base, mode, list(attributes), epochs=epochs, batch_size=batch_size,
                             learning_rate=learning_rate, seed=seed)
        metrics = train_regressor(data, out, config, spec, resume=resume, cache_dir=cache_dir, progress=progress)
    except (ResumeError, ValueError, FileNotFoundError) as err:
        fail(str(err))
    for attribute in attributes:
        note = data.note(attribute)
        if note:
            click.echo(f"note: {note}")
    click.echo(json.dumps(metrics["attributes"], indent=2))
    click.echo(f"model: {out / 'model.keras'}; per-epoch MAE: {out / 'history.csv'}")


@cli.command()
@rated_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Grid folder.")
@click.option("--bases", default="age,gender", show_default=True, help="Comma-separated base nets.")
@click.option("--modes", default="dense,full", show_default=True, help="Comma-separated modes.")
@click.option("--attributes", default="attractive,happy,confident,intelligent", show_default=True)
@click.option("--epochs-dense", type=click.IntRange(1), default=60, show_default=True)
@click.option("--epochs-full", type=click.IntRange(1), default=30, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--table-only", is_flag=True, help="Only rewrite Table 1 and Fig. 3 from the finished runs.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), envvar="PSYATTR_CACHE_DIR")
@click.option("--progress/--no-progress", default=True)
def grid(data_spec, scale, image_column, out, bases, modes, attributes, epochs_dense, epochs_full, seed, table_only,
         cache_dir, progress) -> None:
    """Train the paper's 16 models (bases x modes x attributes), then write Table 1 and Fig. 3."""
    from psyattr.grid import collect_runs, plot_fig3, run_grid, write_table1

    try:
        if not table_only:
            spec, data = load_rated(data_spec, scale, image_column)
            run_grid(data, out, spec, bases.split(","), modes.split(","), attributes.split(","),
                     {"dense": epochs_dense, "full": epochs_full}, seed, cache_dir, progress)
        runs = collect_runs(out)
        md_path, csv_path = write_table1(runs, out)
        fig_path = plot_fig3(runs, out / "fig3_learning_curves.png")
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    click.echo(md_path.read_text())
    click.echo(f"Table 1: {md_path} and {csv_path}; Fig. 3: {fig_path}")


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", "data_spec", type=RatedDataSpec(), help="Rated faces, if not those the run was trained on.")
@click.option("--scale", help="Rating scale LOW,HIGH of a csv data set.")
@click.option("--image-column", help="Image-path column of a csv data set.")
def evaluate(run_dir, data_spec, scale, image_column) -> None:
    """Re-score the saved model of RUN_DIR on its test half."""
    from psyattr.train import evaluate_saved_run

    try:
        data = load_rated(data_spec, scale, image_column)[1] if data_spec else None
        metrics = evaluate_saved_run(run_dir, data)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    click.echo(json.dumps(metrics["attributes"], indent=2))


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
    from psyattr.studies.common import load_study_model, held_out_faces

    _, data = load_rated(data_spec, scale, image_column)
    models = [load_study_model(spec) for spec in model_specs]
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
    from psyattr.studies.common import load_study_model
    from psyattr.studies.expressions import expression_study

    try:
        results = expression_study([load_study_model(s) for s in model_specs], folder, out, attribute, composite)
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

    try:
        models, data, test = _study_inputs(model_specs[:1], data_spec, scale, image_column, seed, limit or 16)
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

        result = check_report(path, run_dir / "report_screenshot.png")
        click.echo(f"rendered in Chromium: {len(result['sections'])} sections, {result['images']} images "
                   f"({result['broken_images']} broken); screenshot {result['screenshot']}")


@cli.command()
@click.option("--data", type=click.Path(file_okay=False, path_type=Path),
              help="OMI folder [default: $PSYATTR_DATA_DIR/omi, or the copy from `psyattr data fetch omi`].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("psyattr_demo"), show_default=True)
@click.option("--epochs", type=click.IntRange(1), default=30, show_default=True)
@click.option("--occlusion-faces", type=click.IntRange(1), help="Occlude only the first N test faces [default: all].")
@click.option("--quality-faces", type=click.IntRange(1), default=12, show_default=True,
              help="Faces for the explanation-quality study.")
@click.option("--serve/--no-serve", default=True, help="Export the model and ask it over gRPC.")
def demo(data, out, epochs, occlusion_faces, quality_faces, serve) -> None:
    """Run the main job end to end on OMI: fine-tune, evaluate, explain, occlude, compare, export, serve, report."""
    from psyattr.data.fetch import FetchError
    from psyattr.demo import run_demo

    try:
        run_demo(out, data, epochs, occlusion_faces, quality_faces, serve=serve, echo=click.echo)
    except (FetchError, ValueError, FileNotFoundError) as err:
        fail(str(err))


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


@cli.command()
@click.option("--model", "model_spec", required=True,
              help="A .keras file, a run folder, or a base net: age, gender (shipped weights) or age:PRESET.")
@click.option("--target", help="Output to explain: a name (e.g. happy, female) or an index [default: top output].")
@click.option("--composite", default="alpha2beta1", show_default=True,
              help="LRP composite, or gradient / gradient_x_input.")
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True)
@click.option("--jit/--no-jit", default=True, show_default=True, help="Compile the relevance graph with XLA.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--progress/--no-progress", default=True)
@click.option("--server", metavar="HOST:PORT", help="Ask a served model (psyattr serve or TF Serving) instead; "
              "--model is then its served name.")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=60.0, show_default=True,
              help="Seconds per request to --server.")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.pass_context
def explain(ctx, model_spec, target, composite, batch_size, jit, out, progress, images, server, timeout) -> None:
    """Explain IMAGES (files or folders): a PNG heatmap, the relevance .npy and the scores .json per image."""
    if server:
        _explain_served(ctx, server, model_spec, target, batch_size, timeout, out, progress, images)
        return
    from psyattr.data.images import list_images
    from psyattr.explain import explain_files
    from psyattr.lrp import COMPOSITES, GRADIENT_METHODS, LRPError, LRPExplainer
    from psyattr.models.loading import load_model

    if composite not in COMPOSITES and composite not in GRADIENT_METHODS:
        fail(f"unknown composite {composite!r}: expected one of {', '.join([*sorted(COMPOSITES), *GRADIENT_METHODS])}")
    try:
        paths = list_images(list(images))
        if not paths:
            fail(f"no images found in {', '.join(map(str, images))}")
        explainer = LRPExplainer(load_model(model_spec), composite, jit_compile=jit)
        parsed_target = int(target) if target is not None and target.isdigit() else target
        if parsed_target is not None:
            explainer.resolve_targets(parsed_target, 1)
        written, skipped = explain_files(explainer, paths, out, parsed_target, batch_size, progress)
    except (LRPError, ValueError, FileNotFoundError) as err:
        fail(str(err))
    for path, why in skipped:
        click.echo(f"skipped {path}: {why}", err=True)
    if not written:
        fail(f"none of the {len(paths)} images could be read")
    click.echo(f"explained {len(written)} image(s) with {explainer.name} into {out}"
               + (f"; skipped {len(skipped)}" if skipped else ""))


def _explain_served(ctx, server, model_name, target, batch_size, timeout, out, progress, images) -> None:
    from psyattr.data.images import list_images
    from psyattr.serving import ExplainerClient, ServingError
    from psyattr.serving.files import explain_files

    for option in ("composite", "jit"):
        if ctx.get_parameter_source(option) != click.core.ParameterSource.DEFAULT:
            fail(f"--{option} applies to local explanations: a served model explains with the composite it was "
                 "exported with")
    parsed_target = int(target) if target is not None and target.isdigit() else target
    try:
        paths = list_images(list(images))
        if not paths:
            fail(f"no images found in {', '.join(map(str, images))}")
        with ExplainerClient(server, model_name, timeout, batch_size=batch_size) as client:
            written, skipped = explain_files(client, paths, out, parsed_target, progress=progress)
    except (ServingError, FileNotFoundError) as err:
        fail(str(err))
    for path, why in skipped:
        click.echo(f"skipped {path}: {why}", err=True)
    if not written:
        fail(f"none of the {len(paths)} images could be read")
    click.echo(f"explained {len(written)} image(s) with {model_name} at {server} into {out}"
               + (f"; skipped {len(skipped)}" if skipped else ""))


@cli.command("export")
@click.argument("model_spec", metavar="MODEL")
@click.option("--name", required=True, help="Served model name, e.g. psyattr_attractive.")
@click.option("--version", "version", type=click.IntRange(1), help="Version number [default: latest + 1].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("saved_models"),
              show_default=True, help="Models folder: versions go to OUT/NAME/VERSION.")
@click.option("--composite", default="alpha2beta1", show_default=True, help="LRP composite of the explain signatures.")
def export_command(model_spec: str, name: str, version: int | None, out: Path, composite: str) -> None:
    """Export MODEL (a run folder or .keras file) as a TF Serving version with predict and explain signatures."""
    from psyattr.export import ExportError, export_model
    from psyattr.lrp import COMPOSITES, LRPError

    if composite not in COMPOSITES:
        fail(f"unknown composite {composite!r}: expected one of {', '.join(sorted(COMPOSITES))}")
    try:
        path = export_model(model_spec, out, name, version, composite)
    except (ExportError, LRPError, FileExistsError, FileNotFoundError, ValueError) as err:
        fail(str(err))
    click.echo(f"exported {name} version {path.name} to {path} (signatures serving_default, explain, explain_xla)")


@cli.command()
@click.option("--models", type=click.Path(file_okay=False, path_type=Path), default=Path("saved_models"),
              show_default=True, help="Models folder: MODELS/NAME/VERSION.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TF Serving model config (model_config_list): names, version policies, labels.")
@click.option("--batching-parameters", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TF Serving batching parameters file [default: max 16 images, 2 ms timeout].")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every network).")
@click.option("--port", type=click.IntRange(0, 65535), default=8500, show_default=True, help="0 picks a free port.")
@click.option("--poll-seconds", type=click.FloatRange(0.1), default=1.0, show_default=True,
              help="How often version folders are checked for new versions.")
@click.option("--max-message-mb", type=click.IntRange(1, 2047), default=64, show_default=True,
              help="Largest request accepted.")
@click.option("--xla-cpu-compilation-enabled", is_flag=True,
              help="Allow the explain_xla signature (TF Serving's --xla_cpu_compilation_enabled=true).")
@click.option("--grace-seconds", type=click.FloatRange(0), default=30.0, show_default=True,
              help="On Ctrl-C or SIGTERM, how long requests in flight may take to finish.")
def serve(models, config, batching_parameters, host, port, poll_seconds, max_message_mb,
          xla_cpu_compilation_enabled, grace_seconds) -> None:
    """Serve exported models over TF Serving's gRPC API until interrupted (Ctrl-C or SIGTERM)."""
    import signal
    import threading

    from psyattr.serving import ModelServer, read_batching_parameters
    from psyattr.serving.config import ConfigError

    try:
        batching = read_batching_parameters(batching_parameters) if batching_parameters else None
        server = ModelServer(models, config, batching, host, port, poll_seconds, max_message_mb << 20,
                             xla_cpu_compilation_enabled).start()
    except (ConfigError, OSError) as err:
        fail(str(err))
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    click.echo(f"serving {', '.join(server.models()) or 'no models yet'} on {server.address} "
               "(gRPC: tensorflow.serving.PredictionService, ModelService)", nl=True)
    sys.stdout.flush()
    while not stop.wait(0.5):
        pass
    server.stop(grace_seconds)
    click.echo("stopped")


@cli.command()
@click.option("--model", "model_spec", required=True,
              help="With --server: the served model's name; else a .keras file, a run folder or a base net.")
@click.option("--server", metavar="HOST:PORT", help="Ask a served model (psyattr serve or TF Serving).")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=60.0, show_default=True,
              help="Seconds per request to --server.")
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the scores as JSON here.")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
def predict(model_spec, server, timeout, batch_size, out, images) -> None:
    """Score IMAGES (files or folders): the model's named outputs per image, as JSON."""
    from psyattr.checkpoints import atomic_write_text
    from psyattr.data.images import list_images
    from psyattr.serving.errors import ServingError
    from psyattr.serving.files import predict_files

    try:
        paths = list_images(list(images))
        if not paths:
            fail(f"no images found in {', '.join(map(str, images))}")
        if server:
            from psyattr.serving import ExplainerClient

            with ExplainerClient(server, model_spec, timeout, batch_size=batch_size) as client:
                records, skipped = predict_files(client.predict, paths, batch_size)
        else:
            from psyattr.export import local_predictor
            from psyattr.models.loading import load_model

            records, skipped = predict_files(local_predictor(load_model(model_spec)), paths, batch_size)
    except (ServingError, ValueError, FileNotFoundError) as err:
        fail(str(err))
    for path, why in skipped:
        click.echo(f"skipped {path}: {why}", err=True)
    if not records:
        fail(f"none of the {len(paths)} images could be read")
    if out:
        atomic_write_text(out, json.dumps(records, indent=2))
        click.echo(f"scored {len(records)} image(s) into {out}")
    else:
        for record in records:
            click.echo(json.dumps(record))


def main() -> None:
    """Entry point of the `psyattr` console script."""
    cli(prog_name="psyattr")


if __name__ == "__main__":
    sys.exit(main())
