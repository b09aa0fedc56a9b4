"""Training on several machines: the cluster TF_CONFIG names, MultiWorkerMirroredStrategy and its training loop.

Every worker runs the same command with its own TF_CONFIG. Each generates the same seeded global batches and
trains on its share of each; the gradients are summed across workers by all-reduce, so a step sees the whole
global batch as one worker would. The chief (the first worker) alone writes the run folder, which must be the
same folder for every worker (a shared filesystem on a real cluster).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf

TF_CONFIG = "TF_CONFIG"
_EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}\'')
# What a collective op raises when a peer is gone (killed, unreachable, or aborted by the health check).
_LOST = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
         tf.errors.AbortedError, tf.errors.InternalError, tf.errors.UnknownError)


class DistributedError(RuntimeError):
    """A multi-worker run that cannot start, or that lost a worker."""


@dataclasses.dataclass
class Cluster:
    """This process's place in a multi-worker run."""

    strategy: tf.distribute.Strategy
    addresses: list[str]
    index: int
    chiefs: int = 0  # how many of `addresses` are TF_CONFIG's "chief" task (listed first)

    @property
    def workers(self) -> int:
        """How many workers train together."""
        return len(self.addresses)

    @property
    def is_chief(self) -> bool:
        """Whether this worker writes the run folder (checkpoints, state, model, metrics)."""
        return self.index == 0


def read_tf_config(environ: Mapping[str, str] = os.environ) -> tuple[list[str], int, int] | None:
    """The addresses (chief first), this task's rank and the chief count TF_CONFIG names; None where unset."""
    text = environ.get(TF_CONFIG, "").strip()
    if not text:
        return None
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        chiefs, workers = list(cluster.get("chief", [])), list(cluster.get("worker", []))
        kind, index = task["type"], int(task["index"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise DistributedError(f"{TF_CONFIG} is not a cluster description ({err!r}); it should look like "
                               f"{_EXAMPLE}") from err
    others = sorted(set(cluster) - {"chief", "worker"})
    if others:
        raise DistributedError(f"{TF_CONFIG} names {', '.join(others)} tasks: multi-worker training uses only "
                               f"'worker' (and at most one 'chief'), e.g. {_EXAMPLE}")
    addresses = chiefs + workers
    ranks = {"chief": (0, len(chiefs)), "worker": (len(chiefs), len(workers))}
    if kind not in ranks or not 0 <= index < ranks[kind][1]:
        raise DistributedError(f"{TF_CONFIG}'s task {kind} {index} is not in its cluster of {len(chiefs)} chief and "
                               f"{len(workers)} worker task(s)")
    return addresses, ranks[kind][0] + index, len(chiefs)


def join_cluster(distributed: bool = False, timeout: float = 600) -> Cluster | None:
    """Start this worker's part of the cluster TF_CONFIG names; None where it names one worker or none.

    `distributed` insists on a cluster description. It must run before TensorFlow does anything else in this
    process (the collective ops are configured when TensorFlow starts). Where not every worker has joined
    within `timeout` seconds, the process stops with a message naming them (TensorFlow would wait forever, deaf
    to Ctrl-C).
    """
    found = read_tf_config()
    if found is None:
        if distributed:
            raise DistributedError(f"--distributed needs {TF_CONFIG} to name the workers, e.g. {_EXAMPLE}")
        return None
    addresses, index, chiefs = found
    if len(addresses) < 2 and not distributed:
        return None
    others = ", ".join(a for k, a in enumerate(addresses) if k != index)
    print(f"worker {index} of {len(addresses)} ({addresses[index]}): waiting for {others} to join", file=sys.stderr,
          flush=True)
    watchdog = _watchdog(timeout, f"Error: worker {index}: not every worker of {TF_CONFIG} ({', '.join(addresses)}) "
                                  f"joined within {timeout:g} s. Start the same command on each of them (each with "
                                  "its own task index), or raise --join-timeout")
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except (RuntimeError, ValueError, tf.errors.OpError) as err:
        raise DistributedError(f"cannot join the cluster of {TF_CONFIG} as worker {index} ({addresses[index]}): "
                               f"{err}. Start each worker in a fresh process, with nothing else on its port") from err
    finally:
        watchdog.kill()
        watchdog.wait()
    return Cluster(strategy, addresses, index, chiefs)


# A separate process, because the wait holds the interpreter inside TensorFlow: no Python thread or signal
# handler runs until every worker has joined, and TensorFlow ignores SIGTERM meanwhile.
_WATCHDOG = """import os, signal, sys, time
time.sleep(float(sys.argv[1]))
if os.getppid() == int(sys.argv[2]):
    sys.stderr.write(sys.argv[3] + "\\n")
    sys.stderr.flush()
    os.kill(int(sys.argv[2]), signal.SIGKILL)
"""


def _watchdog(timeout: float, message: str) -> subprocess.Popen:
    try:  # where the CLI filters descriptor 2 through a thread of this process, sys.stderr is the terminal itself
        stderr = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        stderr = None
    return subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(timeout), str(os.getpid()), message],
                            stdin=subprocess.DEVNULL, stderr=stderr)


def _why(err: tf.errors.OpError, cluster: Cluster) -> str:
    text = str(err)
    # TensorFlow's message starts with where in the graph it failed; the peer and its status say what happened.
    peer = re.search(r"/job:(chief|worker)/(?:replica:\d+/)?task:(\d+)", text)
    said = re.search(r'grpc_message:"([^"]+)"', text)
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.startswith(("Graph execution error", "Detected at node", " "))]
    if "heartbeat" in text:
        reason = "it stopped sending heartbeats"
    else:
        reason = said.group(1) if said else lines[0] if lines else type(err).__name__
    if peer is None:
        return reason
    rank = int(peer.group(2)) + (cluster.chiefs if peer.group(1) == "worker" else 0)
    where = f" at {cluster.addresses[rank]}" if rank < cluster.workers else ""
    return f"{peer.group(1)} {peer.group(2)}{where}: {reason}"


def _shares(cluster: Cluster, batches: Callable[[], tf.data.Dataset]) -> Any:
    def share(context: tf.distribute.InputContext) -> tf.data.Dataset:
        part, parts = context.input_pipeline_id, context.num_input_pipelines

        def take(images, labels):
            # Every worker draws the same global batch (same seed) and keeps its slice of it, so the global
            # step trains on exactly the faces one worker would; the batch's size comes along to scale the loss.
            size = tf.shape(images)[0]
            each = (size + parts - 1) // parts
            start, stop = tf.minimum(part * each, size), tf.minimum((part + 1) * each, size)
            return images[start:stop], labels[start:stop], size

        return batches().map(take).prefetch(tf.data.AUTOTUNE)

    return cluster.strategy.distribute_datasets_from_function(share)


def fit_distributed(model: keras.Model, cluster: Cluster, batches: Callable[[], tf.data.Dataset],
                    loss: Callable[[tf.Tensor, tf.Tensor], tf.Tensor], steps_per_epoch: int, epochs: int,
                    initial_epoch: int, callbacks: Sequence[keras.callbacks.Callback]) -> None:
    """What `model.fit` does, on every worker of `cluster` together: one global batch of `batches()` per step.

    `loss` gives each example's loss; a step's gradient is that of their mean over the global batch. The model
    must have been built and compiled under `cluster.strategy.scope()`. Keras's own `fit` cannot run under
    MultiWorkerMirroredStrategy (keras-team/keras#20585), hence this loop.
    """
    strategy = cluster.strategy
    optimizer = model.optimizer
    with strategy.scope():
        optimizer.build(model.trainable_variables)
    iterator = iter(_shares(cluster, batches))

    # The loss in float32 under mixed precision (as Keras's fit has it), in float64 where the model computes in it.
    dtype = tf.float64 if model.compute_dtype == "float64" else tf.float32

    def replica_step(images, labels, size):
        if labels.dtype.is_floating:
            labels = tf.cast(labels, dtype)
        with tf.GradientTape() as tape:
            predicted = tf.cast(model(images, training=True), dtype)
            total = tf.reduce_sum(loss(labels, predicted)) / tf.cast(size, dtype)
            if model.losses:
                total += tf.cast(tf.add_n(model.losses), dtype) / strategy.num_replicas_in_sync
            scaled = optimizer.scale_loss(total)
        gradients = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return total

    @tf.function
    def step(iterator):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_step, args=next(iterator)), axis=None)

    hooks = keras.callbacks.CallbackList(list(callbacks), model=model, add_history=False, add_progbar=False,
                                         epochs=epochs, steps=steps_per_epoch)
    hooks.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        hooks.on_epoch_begin(epoch)
        losses = []
        for batch in range(steps_per_epoch):
            hooks.on_train_batch_begin(batch)
            try:
                losses.append(float(step(iterator)))
            except _LOST as err:
                raise DistributedError(
                    f"worker {cluster.index} of {cluster.workers} lost the others in epoch {epoch + 1}, step "
                    f"{batch + 1} ({_why(err, cluster)}). Epochs up to {epoch} are saved: start every worker again "
                    "with --resume"
                ) from err
            hooks.on_train_batch_end(batch, {"loss": losses[-1]})
        hooks.on_epoch_end(epoch, {"loss": sum(losses) / len(losses)})
    hooks.on_train_end()


def writes_run(cluster: Cluster | None) -> bool:
    """Whether this process writes the run folder: a one-worker run, or the chief of a cluster."""
    return cluster is None or cluster.is_chief


def strategy_scope(cluster: Cluster | None) -> contextlib.AbstractContextManager:
    """Where a model that `cluster` trains is built (its variables mirrored on every worker); else nothing."""
    return cluster.strategy.scope() if cluster is not None else contextlib.nullcontext()
