"""Where code runs and how long it took: device choice, memory settings, stage timing.

Nothing here imports a stage. Benchmark timing and provenance live with the tools
(``tools/_common``).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import time
from collections.abc import Iterator

import torch

log = logging.getLogger(__name__)



def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when torch sees it, else cpu), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for, but torch sees no CUDA device; use cpu or "
                         f"auto")
    return torch.device(name)


def keep_freed_memory() -> bool:
    """Stop glibc from handing large freed buffers back to the OS after every step.

    By default glibc serves blocks over 128 KiB-32 MiB by mmap and unmaps them on free, so every
    step page-faults its activations in again (about a fifth of a CPU Hebbian step, as system
    time). Raising the mmap and trim thresholds keeps them in the heap for reuse; the process's
    resident memory then stays at its peak. Process-wide; a no-op where glibc is absent.
    Returns whether the thresholds were set.
    """
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameter numbers (malloc.h)
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(
        libc.mallopt(m_trim_threshold, 2**31 - 1))


def release_freed_memory() -> bool:
    """Hand the heap's free pages back to the OS (glibc's ``malloc_trim``): after a stage that
    ran under :func:`keep_freed_memory`, so that the next stage of the same process (embedding
    after pretraining in `hebbret run`) starts from what is live, not from the last peak.
    Returns whether memory was released; a no-op where glibc is absent."""
    if sys.platform != "linux":
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


# ------------------------------------------------------------------------------------- timing


@contextlib.contextmanager
def timed(seconds: dict[str, float], name: str, digits: int = 1) -> Iterator[None]:
    """Add the wall time of the block to ``seconds[name]`` (rounded to ``digits``)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - t0, digits)


def load_average() -> list[float] | None:
    """1/5/15-minute load averages: other processes on a shared machine skew timings."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# ------------------------------------------------------------- benchmark timing on shared CPUs


# ---------------------------------------------------------------------------------- provenance


