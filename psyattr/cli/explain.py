"""The explain command: heatmaps of image files, computed here or by a served model."""

from __future__ import annotations

from pathlib import Path

import click

from psyattr.cli import cli
from psyattr.cli.options import fail, report_skipped


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
@click.option("--align", is_flag=True, help="Align each face to the framing of the OMI faces the attribute models "
                                            "learned from (eyes and mouth found by the face-mesh detector).")
@click.pass_context
def explain(ctx, model_spec, target, composite, batch_size, jit, out, progress, images, server, timeout, align) -> None:
    """Explain IMAGES (files or folders): a PNG heatmap, the relevance .npy and the scores .json per image."""
    if server and align:
        fail("--align aligns faces for local explanations; a served model takes the images as they are")
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
        written, skipped = explain_files(explainer, paths, out, parsed_target, batch_size, progress, align)
    except (LRPError, ValueError, FileNotFoundError) as err:
        fail(str(err))
    report_skipped(len(paths), len(written), skipped)
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
    report_skipped(len(paths), len(written), skipped)
    click.echo(f"explained {len(written)} image(s) with {model_name} at {server} into {out}"
               + (f"; skipped {len(skipped)}" if skipped else ""))
