"""Commands that fine-tune base nets to ratings and score the results."""

from __future__ import annotations

import json
from pathlib import Path

import click

from psyattr.cli import cli
from psyattr.cli.options import (RatedDataSpec, distributed_option, dropout_option, fail, framing_option, load_rated,
                                 other_worker_done, precision_option, rated_options, start_cluster)


@cli.command()
@click.option("--base", required=True, help="Base net: age or gender (shipped weights), age:PRESET, or a .keras file.")
@click.option("--mode", type=click.Choice(["ridge", "dense", "full"]), default="ridge", show_default=True,
              help="ridge: solve a linear head on the root-scaled pool5 features (closest to the raters on OMI, in "
                   "seconds); dense: train fc6..fc8 on cached features; full: then the whole net too.")
@click.option("--attribute", "attributes", multiple=True, required=True,
              help="Attribute to learn (repeat for several): a column, or attractive/happy/confident/intelligent.")
@rated_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Run folder.")
@click.option("--epochs", type=click.IntRange(1), help="[default: 120 in dense mode, 15 in full mode]")
@click.option("--validation", type=click.FloatRange(0, 0.5, max_open=True), default=0.0, show_default=True,
              help="Share of the training faces held out to pick the best epoch (dense, full; e.g. 0.1); 0 trains "
                   "on every training face and keeps the last epoch, as the paper does.")
@click.option("--warmup-epochs", type=click.IntRange(0), default=120, show_default=True,
              help="Full mode: dense-mode epochs of fc6..the head before the whole net moves (0: none).")
@click.option("--feature-lr-scale", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="Full mode: the conv layers' share of the learning rate.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--learning-rate", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the 50/50 split and training.")
@framing_option("How each photo is framed before training [default: the base net's own framing].")
@click.option("--resume", is_flag=True, help="Continue the run in --out after an interruption.")
@click.option("--cv", "folds", type=int, metavar="K",
              help="K-fold cross-validation instead of the 50/50 split: one run per fold in --out (an interrupted "
                   "one goes on where it stopped), every face predicted once by a model that did not see it.")
@dropout_option
@precision_option
@distributed_option
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), envvar="PSYATTR_CACHE_DIR")
@click.option("--progress/--no-progress", default=True)
def train(base, mode, attributes, data_spec, scale, image_column, out, epochs, validation, warmup_epochs,
          feature_lr_scale, batch_size, learning_rate, seed, framing, resume, folds, dropout, precision, distributed,
          join_timeout, cache_dir, progress) -> None:
    """Fine-tune a base net to human ratings (the paper's SGD, Nesterov momentum, 50/50 split or --cv K folds)."""
    cluster = start_cluster(distributed, join_timeout)  # before TensorFlow does anything else in this process
    from psyattr.checkpoints import ResumeError
    from psyattr.distributed import DistributedError
    from psyattr.runs import RunError
    from psyattr.train import TrainConfig, train_regressor

    try:
        if mode == "ridge" and (epochs is not None or resume or distributed):
            raise ValueError("ridge mode is solved in one step: --epochs, --resume and --distributed do not apply")
        spec, data = load_rated(data_spec, scale, image_column)
        config = TrainConfig(base, mode, list(attributes), epochs=epochs, batch_size=batch_size,
                             learning_rate=learning_rate, seed=seed, framing=framing, dropout=dropout,
                             precision=precision, validation=validation, warmup_epochs=warmup_epochs,
                             feature_lr_scale=feature_lr_scale)
        if folds is not None and cluster is not None:
            raise ValueError("--cv runs its folds one after another on one worker: run it without TF_CONFIG")
        if folds is not None:
            from psyattr.crossval import cross_validate

            metrics = cross_validate(data, out, config, folds, spec, cache_dir, progress)
        else:
            metrics = train_regressor(data, out, config, spec, resume=resume, cache_dir=cache_dir, progress=progress,
                                      cluster=cluster)
    except (ResumeError, RunError, DistributedError, ValueError, FileNotFoundError) as err:
        fail(str(err))
    if other_worker_done(cluster, out):
        return
    for attribute in attributes:
        note = data.note(attribute)
        if note:
            click.echo(f"note: {note}")
    click.echo(json.dumps(metrics["attributes"], indent=2))
    if folds is not None:
        click.echo(f"{folds}-fold CV: pooled predictions {out / 'predictions.csv'}, metrics {out / 'metrics.json'}, "
                   f"one run per fold in {out}/fold_*")
    else:
        click.echo(f"model: {out / 'model.keras'}" + ("" if mode == "ridge" else f"; per-epoch MAE: {out / 'history.csv'}"))


@cli.command()
@rated_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Grid folder.")
@click.option("--bases", default="age,gender", show_default=True, help="Comma-separated base nets.")
@click.option("--modes", help="Comma-separated modes [default: ridge,dense,full; under --cv ridge,dense, since a "
                               "full-mode fold takes minutes].")
@click.option("--attributes", default="attractive,happy,confident,intelligent", show_default=True)
@click.option("--epochs-dense", type=click.IntRange(1), default=120, show_default=True)
@click.option("--epochs-full", type=click.IntRange(1), default=15, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@framing_option("How each photo is framed [default: each base net's own framing].")
@click.option("--table-only", is_flag=True, help="Only rewrite Table 1 and Fig. 3 from the finished runs.")
@click.option("--cv", "folds", type=int, metavar="K",
              help="Each cell a K-fold cross-validation instead of one run on the 50/50 split.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), envvar="PSYATTR_CACHE_DIR")
@click.option("--progress/--no-progress", default=True)
def grid(data_spec, scale, image_column, out, bases, modes, attributes, epochs_dense, epochs_full, seed, framing,
         table_only, folds, cache_dir, progress) -> None:
    """Train a model per base, mode and attribute (the paper's 16 and ridge mode's 8), then write Table 1 and Fig. 3."""
    from psyattr.checkpoints import ResumeError
    from psyattr.grid import collect_runs, plot_fig3, run_grid, write_table1
    from psyattr.runs import RunError

    try:
        if not table_only:
            spec, data = load_rated(data_spec, scale, image_column)
            run_grid(data, out, spec, bases.split(","), modes.split(",") if modes else None, attributes.split(","),
                     {"dense": epochs_dense, "full": epochs_full}, seed, cache_dir, progress, framing=framing,
                     cv=folds)
        runs = collect_runs(out)
        md_path, csv_path = write_table1(runs, out)
        fig_path = plot_fig3(runs, out / "fig3_learning_curves.png")
    except (ResumeError, RunError, ValueError, FileNotFoundError) as err:
        fail(str(err))
    click.echo(md_path.read_text())
    click.echo(f"Table 1: {md_path} and {csv_path}; Fig. 3: {fig_path}")


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", "data_spec", type=RatedDataSpec(), help="Rated faces, if not those the run was trained on.")
@click.option("--scale", help="Rating scale LOW,HIGH of a csv data set.")
@click.option("--image-column", help="Image-path column of a csv data set.")
def evaluate(run_dir, data_spec, scale, image_column) -> None:
    """Re-score the saved model of RUN_DIR on its test half (other --data: into RUN_DIR/evaluations/)."""
    from psyattr.train import evaluate_saved_run, evaluation_dir

    try:
        spec, data = load_rated(data_spec, scale, image_column) if data_spec else (None, None)
        metrics = evaluate_saved_run(run_dir, data, data_spec=spec)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    click.echo(json.dumps(metrics["attributes"], indent=2))
    click.echo(f"metrics.json and predictions.csv written to {evaluation_dir(run_dir, data)}", err=True)
