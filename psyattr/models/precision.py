"""Choosing and scoping Keras dtype policies (mixed bfloat16 where the hardware runs it fast)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import keras
import tensorflow as tf

# float64 is for checking numerics (e.g. that several workers train what one does), at about half the speed.
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16", "float64")


def resolve_precision(precision: str) -> str:
    """Turn "auto" into mixed_bfloat16 on a GPU or a CPU with bfloat16 units, else float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if tf.config.list_physical_devices("GPU"):
        return "mixed_bfloat16"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "float32"
    return "mixed_bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"


@contextlib.contextmanager
def dtype_policy(policy: str) -> Iterator[None]:
    """Build layers under `policy` inside the block; the previous global policy comes back after."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
