"""The commands for photos: score them (predict) and explain them, here or by a served model."""

from __future__ import annotations

from pathlib import Path

import click

from psyattr.cli import cli
from psyattr.cli.engine import engine_options, refuse_local_options, run_on_ray
from psyattr.cli.options import fail, framing_option, max_pixels_option, report_skipped

FRAMING_HELP = ("How each photo is framed before it is scored [default: as the model records; none: the images are "
                "framed already].")


def _framing(requested, recorded, what):
    from psyattr.faces.framing import FROM_MODEL, resolve_framing

    return resolve_framing(requested if requested is not None else FROM_MODEL, recorded, what)


def _photos(images) -> list[Path]:
    from psyattr.scale.inputs import is_uri, list_inputs

    try:
        found = list_inputs(list(images))
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    remote = [p for p in found if is_uri(p)]
    if remote:
        fail(f"{remote[0]} is not a local file: photos named by URIs need --engine ray")
    paths = [Path(p) for p in found]
    if not paths:
        fail(f"no images found in {', '.join(map(str, images))}")
    return paths


@cli.command()
@click.option("--model", "model_spec", required=True,
              help="A .keras file, a run folder, or a base net: age, gender (shipped weights) or age:PRESET; with "
                   "--server, the served model's name.")
@click.option("--target", help="Output to explain: a name (e.g. happy, female) or an index [default: top output].")
@click.option("--composite", default="alpha2beta1", show_default=True,
              help="LRP composite, or gradient / gradient_x_input.")
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True)
@click.option("--jit/--no-jit", default=True, show_default=True, help="Compile the relevance graph with XLA.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@framing_option(FRAMING_HELP)
@click.option("--on-original", is_flag=True, help="Also draw each heatmap warped back onto the photo as given.")
@max_pixels_option
@click.option("--progress/--no-progress", default=True)
@click.option("--server", metavar="HOST:PORT", help="Ask a served model (psyattr serve or TF Serving) instead, over "
              "gRPC, or over REST with http://HOST:PORT; --model is then its served name.")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=60.0, show_default=True,
              help="Seconds per request to --server.")
@engine_options
@click.argument("images", nargs=-1, required=True)
@click.pass_context
def explain(ctx, model_spec, target, composite, batch_size, jit, out, framing, on_original, progress, server, timeout,
            engine, address, workers, images) -> None:
    """Explain IMAGES (files, folders, globs; with Ray also URIs and Parquet/CSV lists): a PNG heatmap, the
    relevance .npy and the scores .json per image, or with --engine ray one Parquet row per image."""
    from psyattr.faces.framing import FramingError
    from psyattr.lrp import COMPOSITES, GRADIENT_METHODS, LRPError
    from psyattr.serving.errors import ServingError

    refuse_local_options(engine, address, workers)
    if composite not in COMPOSITES and composite not in GRADIENT_METHODS:
        fail(f"unknown composite {composite!r}: expected one of {', '.join([*sorted(COMPOSITES), *GRADIENT_METHODS])}")
    if engine == "ray":
        for name, value in (("server", server), ("on-original", on_original or None)):
            if value is not None:
                fail(f"--{name} applies to --engine local")
        run_on_ray("explain", model_spec, images, out, framing=framing, target=target, composite=composite, jit=jit,
                   batch_size=batch_size, address=address, workers=workers, progress=progress)
        return
    paths = _photos(images)
    try:
        if server:
            for option in ("composite", "jit"):
                if ctx.get_parameter_source(option) != click.core.ParameterSource.DEFAULT:
                    fail(f"--{option} applies to local explanations: a served model explains with the composite it "
                         "was exported with")
            written, skipped = _explain_served(server, model_spec, target, batch_size, timeout, out, framing,
                                               on_original, progress, paths)
            where = f"{model_spec} at {server}"
        else:
            written, skipped, where = _explain_local(model_spec, target, composite, jit, batch_size, out, framing,
                                                     on_original, progress, paths)
    except (LRPError, ServingError, FramingError, ValueError, FileNotFoundError) as err:
        fail(str(err))
    report_skipped(len(paths), len(written), skipped)
    click.echo(f"explained {len(written)} image(s) with {where} into {out}" + (f"; skipped {len(skipped)}" if skipped else ""))


def _explain_local(model_spec, target, composite, jit, batch_size, out, framing, on_original, progress, paths):
    from psyattr.explain import explain_files
    from psyattr.lrp import LRPExplainer
    from psyattr.models.loading import load_model
    from psyattr.models.weights import recorded_framing

    model = load_model(model_spec)
    chosen = _framing(framing, recorded_framing(model), f"model {model_spec}")
    explainer = LRPExplainer(model, composite, jit_compile=jit)
    if target is not None:
        explainer.resolve_targets(target, 1)  # a bad target fails before any photo is read
    written, skipped = explain_files(explainer, paths, out, chosen, target, batch_size, progress, on_original,
                                     {"method": explainer.name})
    return written, skipped, f"{explainer.name} ({chosen.name} framing)"


def _explain_served(server, model_name, target, batch_size, timeout, out, framing, on_original, progress, paths):
    from psyattr.explain import explain_files
    from psyattr.serving import ExplainerClient

    with ExplainerClient(server, model_name, timeout, batch_size=batch_size) as client:
        chosen = _framing(framing, client.framing, f"served model {model_name} at {server}")
        return explain_files(client, paths, out, chosen, target, batch_size, progress, on_original,
                             {"server": server, "model": model_name, "signature": "explain"})


@cli.command()
@click.option("--model", "model_spec", required=True,
              help="A .keras file, a run folder or a base net (age, gender, age:PRESET); with --server, the served "
                   "model's name.")
@click.option("--server", metavar="ADDRESS", help="Ask a served model (psyattr serve or TF Serving) at HOST:PORT.")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=60.0, show_default=True,
              help="Seconds per request to --server.")
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True)
@framing_option(FRAMING_HELP)
@max_pixels_option
@click.option("--out", type=click.Path(path_type=Path),
              help="Write one row per image: .csv (a column per output) or .json [default: JSON lines on stdout]; "
                   "with --engine ray, a folder for the Parquet dataset.")
@click.option("--progress/--no-progress", default=False)
@engine_options
@click.argument("images", nargs=-1, required=True)
def predict(model_spec, server, timeout, batch_size, framing, out, progress, engine, address, workers,
            images) -> None:
    """Score IMAGES (files, folders, globs; with Ray also URIs and Parquet/CSV lists): the model's named outputs
    per image (and the expected age of an age net)."""
    import json

    from psyattr.faces.framing import FramingError
    from psyattr.predict import predict_files, write_predictions
    from psyattr.serving.errors import ServingError

    refuse_local_options(engine, address, workers)
    if engine == "ray":
        if server:
            fail("--server applies to --engine local")
        run_on_ray("predict", model_spec, images, out, framing=framing, batch_size=batch_size, address=address,
                   workers=workers, progress=progress)
        return
    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        fail(f"--out must end in .csv or .json, got {out.name}")
    paths = _photos(images)
    try:
        if server:
            from psyattr.serving import ExplainerClient

            with ExplainerClient(server, model_spec, timeout, batch_size=batch_size) as client:
                chosen = _framing(framing, client.framing, f"served model {model_spec} at {server}")
                records = predict_files(client.predict, paths, chosen, batch_size, progress)
        else:
            from psyattr.export import local_predictor
            from psyattr.models.loading import load_model
            from psyattr.models.weights import recorded_framing

            model = load_model(model_spec)
            chosen = _framing(framing, recorded_framing(model), f"model {model_spec}")
            records = predict_files(local_predictor(model), paths, chosen, batch_size, progress)
    except (ServingError, FramingError, ValueError, FileNotFoundError) as err:
        fail(str(err))
    failed = [(Path(r["image"]), r["error"]) for r in records if "error" in r]
    if out:
        write_predictions(records, out)
        click.echo(f"scored {len(records) - len(failed)} image(s) into {out} ({chosen.name} framing)", err=True)
    else:
        for record in records:
            if "error" not in record:
                click.echo(json.dumps(record))
    report_skipped(len(paths), len(records) - len(failed), failed)
