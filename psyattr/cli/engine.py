"""The --engine options of predict and explain, and running them on Ray."""

from __future__ import annotations

import os
from pathlib import Path

import click

from psyattr.cli.options import fail, report_skipped


def engine_options(command):
    """--engine, --address and --workers."""
    for option in reversed([
        click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="Where the work runs: this process, or a Ray cluster (pip install \"psyattr[ray]\"); "
                          "with ray, --out is a Parquet dataset that a rerun resumes."),
        click.option("--address", metavar="ADDRESS",
                     help="The Ray cluster: HOST:PORT, ray://HOST:PORT or auto [default: start one on this machine]."),
        click.option("--workers", type=click.IntRange(1),
                     help="Ray actors, each holding the model once [default: one per CPU of the cluster]."),
    ]):
        command = option(command)
    return command


def refuse_local_options(engine: str, address: str | None, workers: int | None) -> None:
    """--address and --workers belong to the Ray engine."""
    if engine == "local":
        for name, value in (("address", address), ("workers", workers)):
            if value is not None:
                fail(f"--{name} applies to --engine ray")


def run_on_ray(mode: str, model_spec: str, images, out, *, framing=None, target=None, composite="alpha2beta1",
               jit=True, batch_size=16, address=None, workers=None, progress=True) -> None:
    """Check the job here (model, target, framing, inputs), then run it on Ray and report like the local engine."""
    from psyattr.data.images import MAX_PIXELS_ENV
    from psyattr.faces.framing import FROM_MODEL, FramingError, resolve_framing
    from psyattr.lrp import LRPError
    from psyattr.scale import ResultsError, list_inputs
    from psyattr.scale import ray_engine
    from psyattr.scale.worker import BatchJob, check_target, load_for_job

    if out is None:
        fail("--engine ray writes a Parquet dataset: give --out FOLDER")
    if str(out).lower().endswith((".csv", ".json")):
        fail(f"--engine ray writes a Parquet dataset into a folder: give --out FOLDER, not {out}")
    try:
        paths = list_inputs(images)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    if not paths:
        fail(f"no images found in {', '.join(map(str, images))}")
    limit = os.environ.get(MAX_PIXELS_ENV)
    job = BatchJob(mode, str(model_spec), str(out), framing, target, composite, jit,
                   int(limit) if limit else None, ray_engine.default_threads())
    try:
        # The model is loaded here once first: a wrong model, target or framing fails before any actor starts.
        model = load_for_job(job)
        check_target(model, target, f"model {model_spec}")
        chosen = resolve_framing(framing or FROM_MODEL, model.framing, f"model {model_spec}")
        del model
        summary = ray_engine.run_batch(job, paths, address=address, workers=workers, batch_size=batch_size,
                                       progress=progress)
    except (ray_engine.EngineError, ResultsError, LRPError, FramingError, ValueError, FileNotFoundError) as err:
        fail(str(err))

    report_skipped(summary.total, summary.written + summary.done_before, [(Path(p), why) for p, why in summary.failed])
    verb = "explained" if mode == "explain" else "scored"
    before = f"; {summary.done_before} were done already" if summary.done_before else ""
    failed = f"; {len(summary.failed)} failed (their rows say why in the error column)" if summary.failed else ""
    where = f"on Ray ({summary.workers} worker{'s' * (summary.workers > 1)})" if summary.workers else "(nothing left to do)"
    click.echo(f"{verb} {summary.written} image(s) with {model_spec} ({chosen.name} framing) {where} into "
               f"{out}{before}{failed}", err=True)
