"""Commands for the base nets: importing Caffe models and pretraining."""

from __future__ import annotations

import json
from pathlib import Path

import click

from psyattr.cli import cli
from psyattr.cli.options import (FRAMING, TASK, DataSpec, distributed_option, dropout_option, fail, other_worker_done,
                                 precision_option, start_cluster)


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
@precision_option
@click.option("--limit", type=click.IntRange(3), help="Use only this many images (quick trials).")
@click.option("--framing", type=FRAMING, default="utkface", show_default=True,
              help="How each photo is framed before training (the net then expects this framing).")
@click.option("--augment/--no-augment", default=True, show_default=True,
              help="Random scale, rotation, shift, light and colour on top of crops and mirroring.")
@click.option("--keep-checkpoints", type=click.IntRange(0), default=3, show_default=True,
              help="Newest epoch checkpoints kept (0 keeps all).")
@click.option("--resume", is_flag=True, help="Continue the run in --out after an interruption.")
@dropout_option
@distributed_option
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), envvar="PSYATTR_CACHE_DIR",
              help="Where decoded images are cached [default: ~/.cache/psyattr].")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
def pretrain(task, data, out, epochs, batch_size, learning_rate, lr_step_epochs, seed, precision, limit, framing,
             augment, keep_checkpoints, resume, dropout, distributed, join_timeout, cache_dir, progress) -> None:
    """Train an age or gender base net with Levi & Hassner's recipe (checkpoints every epoch)."""
    cluster = start_cluster(distributed, join_timeout)  # before TensorFlow does anything else in this process
    from psyattr.checkpoints import ResumeError
    from psyattr.distributed import DistributedError
    from psyattr.data.readers import read_labelled_faces
    from psyattr.pretrain import PretrainConfig
    from psyattr.pretrain import pretrain as run_pretrain

    try:
        records = read_labelled_faces(data)
        config = PretrainConfig(task, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                                lr_step_epochs=lr_step_epochs, seed=seed, precision=precision, limit=limit,
                                framing=framing, dropout=dropout)
        if not augment:
            config.augmentation = None
        metrics = run_pretrain(records, out, config, resume=resume, cache_dir=cache_dir,
                               keep_checkpoints=keep_checkpoints, progress=progress, cluster=cluster)
    except (ResumeError, DistributedError, ValueError, FileNotFoundError) as err:
        fail(str(err))
    if other_worker_done(cluster, out):
        return
    click.echo(json.dumps(metrics.get("test", {}), indent=2))
    click.echo(f"model: {out / 'model.keras'}; metrics: {out / 'metrics.json'}; "
               f"confusion matrix: {out / 'confusion_matrix.png'}")
