"""Keeping the command line's output to psyattr's own: TensorFlow's (and Ray's) native log lines filtered out.

TensorFlow's C++ side writes log lines (oneDNN, CUDA, CPU features, XLA) straight to file descriptor 2, and no
setting silences all of them. The `psyattr` command (never a user's own process, which `import psyattr` leaves
alone) points descriptor 2 at a pipe whose reader drops those lines and passes everything else on; Python's
own `sys.stderr` (click, tqdm, logging, warnings) keeps writing to the terminal directly. `psyattr -v`
shows everything.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading

# absl/TSL log lines: severity, date, time, thread id, file:line], e.g. "I0000 00:00:1796.123   2515 port.cc:153] ...".
_LOG_LINE = re.compile(rb"^(?P<level>[IWE])\d{4} \d\d:\d\d:[\d.]+\s+\d+ [\w./+-]+:\d+\] (?P<text>.*)")
# Ray's core lines, e.g. "[2026-12-03 09:30:36,314 E 19732 19732] core_worker.cc:2465: ...".
_RAY_LINE = re.compile(rb"^\[\d{4}-\d\d-\d\d [\d:,]+ (?P<level>[IWE]) \d+ \d+\] [\w./+-]+:\d+: (?P<text>.*)")
_NOISE = (rb"WARNING: All log messages before absl::InitializeLog()", rb"To enable the following instructions")
# Ray Data's actor pool keeps its own map function in the object store and Ray's core says so for every pool
# (ray-project/ray#53727): not a failure of the job.
_RAY_NOISE = re.compile(rb"has constructor arguments in the object store")
# Error lines that only say a machine has no usable GPU: every other error line is shown.
_GPU_NOISE = re.compile(rb"cuInit|CUDA|cuda|Unable to register cu\w+ factory")


def _keep(line: bytes) -> bool:
    if line.startswith(_NOISE):
        return False
    match = _LOG_LINE.match(line)
    if match is not None:
        return match["level"] == b"E" and not _GPU_NOISE.search(match["text"])
    match = _RAY_LINE.match(line)
    if match is not None:
        return match["level"] == b"E" and not _RAY_NOISE.search(match["text"])
    return True


def quiet_native_logs() -> None:
    """Filter TensorFlow's native log lines out of this process's file descriptor 2 (idempotent)."""
    # A captured stderr (click's test runner, a notebook) has no native lines to filter and must keep its capture.
    if getattr(quiet_native_logs, "done", False) or sys.stderr is not sys.__stderr__:
        return
    try:
        sys.stderr.flush()
        terminal = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
    except OSError:  # no real stderr (some embedded interpreters): nothing to filter
        return
    sys.stderr = open(terminal, "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                      errors="backslashreplace", closefd=False)
    quiet_native_logs.done = True

    def forward() -> None:
        with open(read_end, "rb", buffering=0) as pipe:
            pending = b""
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if _keep(line):
                        os.write(terminal, line + b"\n")
            if pending and _keep(pending):
                os.write(terminal, pending)

    reader = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    reader.start()

    def drain() -> None:
        # Descriptor 2 is the last writer of the pipe: closing it lets the reader pass on what is left, then end.
        try:
            os.close(2)
        except OSError:
            return
        reader.join(timeout=2)

    atexit.register(drain)


def quiet_python_logs() -> None:
    """Drop TensorFlow's deprecation notices (of APIs it calls itself, e.g. TF Serving's Session loader)."""
    import logging
    import warnings

    logging.getLogger("tensorflow").addFilter(lambda record: "is deprecated" not in record.getMessage())
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(tensorflow|keras|tf_keras_vis)(\.|$)")
