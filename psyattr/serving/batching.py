"""Batching concurrent requests into one Session run, with TF Serving's batching parameters."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import grpc
import numpy as np

from psyattr.serving.config import BatchingParameters
from psyattr.serving.errors import ServingError

log = logging.getLogger(__name__)

RunFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class _Task:
    feeds: dict[str, np.ndarray]
    size: int
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    """A queue of requests for one signature of one version, run in batches by `num_batch_threads` threads.

    A batch closes when it holds `max_batch_size` rows or its first request has waited
    `batch_timeout_micros`; it is padded (with copies of its first row) to the next allowed batch size.
    """

    def __init__(self, run: RunFn, params: BatchingParameters, name: str):
        self.run = run
        self.params = params
        self.name = name
        self._queue: deque[_Task] = deque()
        self._queued_rows = 0
        self._lock = threading.Condition()
        self._closed = False
        self.batch_sizes: Counter[int] = Counter()  # requests per batch -> batches run, for statistics
        self._threads = [threading.Thread(target=self._work, name=f"batch-{name}-{i}", daemon=True)
                         for i in range(params.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    @property
    def queued_rows(self) -> int:
        """Rows waiting for a batch thread."""
        with self._lock:
            return self._queued_rows

    def submit(self, feeds: dict[str, np.ndarray], size: int) -> Future:
        """Queue one validated request of `size` rows; its Future gives its own slice of the outputs."""
        if size > self.params.max_batch_size:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Task size {size} is larger than maximum input "
                               f"batch size {self.params.max_batch_size}")
        task = _Task(feeds, size)
        with self._lock:
            if self._closed:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, f"{self.name} is being unloaded: retry the request")
            limit = self.params.max_enqueued_batches * self.params.max_batch_size
            if self._queued_rows + size > limit:
                raise ServingError(grpc.StatusCode.UNAVAILABLE,
                                   "The batch scheduling queue to which this task was submitted is full")
            self._queue.append(task)
            self._queued_rows += size
            self._lock.notify()
        return task.future

    def _take(self) -> list[_Task] | None:
        timeout = self.params.batch_timeout_micros / 1e6
        with self._lock:
            while not self._queue and not self._closed:
                self._lock.wait()
            if not self._queue:
                return None
            # Wait for more rows until the batch is full or its oldest request has waited long enough.
            while self._queued_rows < self.params.max_batch_size and not self._closed:
                remaining = self._queue[0].enqueued + timeout - time.monotonic() if self._queue else 0
                if remaining <= 0:
                    break
                self._lock.wait(remaining)
            tasks, rows = [], 0
            while self._queue and rows + self._queue[0].size <= self.params.max_batch_size:
                task = self._queue.popleft()
                tasks.append(task)
                rows += task.size
            self._queued_rows -= rows
            if self._queue:
                self._lock.notify()  # another thread can start on the rest
            return tasks

    def _pad_to(self, rows: int) -> int:
        return next((s for s in self.params.allowed_batch_sizes if s >= rows), rows)

    def _work(self) -> None:
        while True:
            tasks = self._take()
            if tasks is None:
                return
            if not tasks:
                continue
            self.batch_sizes[len(tasks)] += 1
            rows = sum(t.size for t in tasks)
            padded = self._pad_to(rows)
            feeds = {}
            for alias in tasks[0].feeds:
                parts = [t.feeds[alias] for t in tasks]
                if padded > rows:
                    parts.append(np.repeat(parts[0][:1], padded - rows, axis=0))
                feeds[alias] = np.concatenate(parts) if len(parts) > 1 else parts[0]
            try:
                outputs = self._run_checked(feeds, padded)
            except Exception as err:
                if len(tasks) == 1:
                    self._fail(tasks[0], err)
                else:
                    # A failed batch is run again request by request: each request gets its own answer or error,
                    # and no error ever speaks of another request's input.
                    for task in tasks:
                        self._run_alone(task)
                continue
            start = 0
            for task in tasks:
                task.future.set_result({alias: value[start:start + task.size] for alias, value in outputs.items()})
                start += task.size

    def _run_checked(self, feeds: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        outputs = self.run(feeds)
        for alias, value in outputs.items():
            if np.ndim(value) == 0 or len(value) != rows:
                raise ServingError(grpc.StatusCode.INTERNAL,
                                   f"batched output {alias!r} has shape {np.shape(value)}, expected "
                                   f"{rows} rows: every output of a batched signature needs the batch axis")
        return outputs

    def _run_alone(self, task: _Task) -> None:
        try:
            outputs = self._run_checked(task.feeds, task.size)
        except Exception as err:
            self._fail(task, err)
            return
        task.future.set_result(outputs)

    def _fail(self, task: _Task, err: Exception) -> None:
        if not isinstance(err, ServingError):
            log.exception("request to %s failed", self.name)
        task.future.set_exception(err)

    def close(self) -> None:
        """Refuse new requests, finish the queued ones, and stop the threads."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        for thread in self._threads:
            thread.join()
