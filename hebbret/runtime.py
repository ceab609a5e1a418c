"""Where code runs and how it is timed: device choice, memory settings, provenance of results.

Everything here is shared by the stages and the benchmark tools; nothing here imports a stage.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from .version import __version__

T = TypeVar("T")


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


def timed_call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
    """(fn(*args, **kwargs), its wall time in seconds)."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, round(time.perf_counter() - t0, 2)


def load_average() -> list[float] | None:
    """1/5/15-minute load averages: other processes on a shared machine skew timings."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# ---------------------------------------------------------------------------------- provenance


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine() -> str:
    """One line naming the machine a number was taken on (CPU, threads, OS; the GPU if any)."""
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu_name()}, {torch.get_num_threads()} threads, {platform.system()} "
            f"{platform.release()}{gpu}")


def machine_info() -> dict[str, Any]:
    """The same as :func:`machine`, field by field, with versions and the load at the start."""
    return {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "platform": platform.platform(), "loadavg_start": load_average(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def git_commit(repo: str | os.PathLike, ignore: Sequence[str] = ()) -> str:
    """The short commit of ``repo``, with ``+dirty`` when tracked files (other than the paths
    in ``ignore``, e.g. a tool's own outputs) differ from it; "" outside a git checkout."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, cwd=repo,
                                  check=False).stdout.strip()
        except OSError:
            return ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return ""
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                *(f":!{p}" for p in ignore))
    return commit + ("+dirty" if dirty else "")


def provenance(command: Sequence[str], repo: str | os.PathLike,
               ignore: Sequence[str] = ()) -> dict[str, str]:
    """What every benchmark row records: the command, the commit, the machine, the versions."""
    return {"command": " ".join(command), "git_commit": git_commit(repo, ignore),
            "machine": machine(), "hebbret_version": __version__, "torch": torch.__version__}
