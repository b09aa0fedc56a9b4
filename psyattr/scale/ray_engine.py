"""Batch jobs on Ray Data: photos as a dataset, an actor pool holding the model once per actor, Parquet parts out.

Each actor is a `BatchWorker`: it frames its batch, scores or explains it and writes the batch's rows as one
Parquet part into `--out` itself (workers write in parallel; the driver only counts). A batch that an actor
could not finish (the actor died) is retried by Ray on a restarted actor and rewrites the same part (batches of
the retried task whose parts exist are read back, not redone); a rerun of a job that stopped skips every image
that has a row already.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from collections.abc import Sequence

from tqdm.auto import tqdm

from psyattr.scale import results
from psyattr.scale.worker import BatchJob, BatchWorker

INSTALL_HINT = 'the Ray engine needs Ray: pip install "psyattr[ray]"'
CONNECT_TIMEOUT = 5.0


class EngineError(RuntimeError):
    """The engine cannot run the job: Ray missing, or a cluster that does not answer."""


@dataclasses.dataclass
class BatchSummary:
    """How a batch job went: images done before this run, rows written now, and the (path, error) that failed."""

    total: int
    done_before: int
    written: int = 0
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    workers: int = 0


def _import_ray():
    try:
        import ray
    except ImportError:
        raise EngineError(INSTALL_HINT) from None
    return ray


def _check_answers(address: str) -> None:
    """Fail within seconds when nothing listens at a `HOST:PORT` or `ray://HOST:PORT` address (Ray would wait)."""
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise EngineError(f"--address {address!r} is not HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as err:
        raise EngineError(f"no Ray cluster answers at {address} ({err.strerror or err}): start one with "
                          "`ray start --head`, or leave out --address to start one on this machine") from None


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Join the Ray cluster at `address`, or start one on this machine; True when this call started Ray."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    if address and address != "auto":
        _check_answers(address)
    quiet = {"TF_CPP_MIN_LOG_LEVEL": "2", "GRPC_VERBOSITY": "ERROR", "PYTHONWARNINGS": "ignore"}
    try:
        ray.init(address=address or None, num_cpus=None if address else num_cpus, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.ERROR, runtime_env={"env_vars": quiet})
    except ConnectionError as err:
        raise EngineError(f"cannot join the Ray cluster at {address}: {err}") from None
    import ray.data

    # Ray Data's INFO lines (execution plans, tips) stay in its session log file, not the terminal.
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.ERROR)
    ray.data.DataContext.get_current().enable_progress_bars = False  # psyattr's own bar counts images
    return True


def cluster_cpus() -> int:
    """The CPUs of the connected cluster."""
    return int(_import_ray().cluster_resources().get("CPU", 1))


def run_batch(job: BatchJob, paths: Sequence[str], *, address: str | None = None, workers: int | None = None,
              batch_size: int = 16, progress: bool = True) -> BatchSummary:
    """Score or explain every path not yet in `job.out` on Ray: the cluster at `address`, the one this process
    has joined, or one started here for the job (and stopped after it)."""
    ray = _import_ray()
    done = results.open_results(job.out, job.record())
    todo = [p for p in paths if p not in done]
    summary = BatchSummary(len(paths), len(paths) - len(todo))
    if not todo:
        return summary
    started = connect(address)
    try:
        _run(ray, job, todo, workers, batch_size, progress, summary)
    finally:
        if started:
            ray.shutdown()
    return summary


def _run(ray, job: BatchJob, todo: list[str], workers: int | None, batch_size: int, progress: bool,
         summary: BatchSummary) -> None:
    chunks = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    workers = summary.workers = min(workers or max(1, cluster_cpus() // job.threads), len(chunks))
    # One row per batch of photos: every batch has `batch_size` photos (the last fewer), so the model sees one
    # shape (XLA compiles once per shape) and a batch's part is named by the same photos when Ray retries it.
    dataset = ray.data.from_items([{"paths": chunk} for chunk in chunks],
                                  override_num_blocks=min(len(chunks), max(workers * 4, len(chunks) // 8)))
    mapped = dataset.map_batches(BatchWorker, fn_constructor_kwargs={"job": job}, batch_size=1,
                                 compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=job.threads,
                                 batch_format="numpy")
    label = f"{'explaining' if job.mode == 'explain' else 'predicting'} (ray, {workers} worker{'s' * (workers > 1)})"
    with tqdm(total=summary.total, initial=summary.done_before, desc=label, unit="img", disable=not progress) as bar:
        for batch in mapped.iter_batches(batch_size=None, batch_format="numpy"):
            for path, error in zip(batch["path"], batch["error"]):
                if error:
                    summary.failed.append((str(path), str(error)))
                else:
                    summary.written += 1
            bar.update(len(batch["path"]))


def default_threads() -> int:
    """Threads per actor: one, so that actors take the cores between them (TensorFlow would take all of each)."""
    return int(os.environ.get("PSYATTR_RAY_THREADS", "1"))
