"""Where code runs and how it is timed: device choice, memory settings, provenance of results.

Everything here is shared by the stages and the benchmark tools; nothing here imports a stage.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from ._io import read_json, write_json
from .version import __version__

T = TypeVar("T")
log = logging.getLogger(__name__)


DEVICES = ("auto", "cpu", "cuda")  # what --device accepts (also cuda:N)


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


# ------------------------------------------------------------- benchmark timing on shared CPUs
MIN_SAMPLE_S = 0.2  # calls faster than this are looped so that one timed sample lasts this long
CONTENDED = 0.10  # share of all CPUs other processes may take beyond the CPUs we leave idle
MAX_EXTRA = 2  # at most this many times ``repeats`` extra samples are taken to replace contended ones


def contended_share() -> float:
    """Others' share of all CPUs above which a sample counts as contended.

    With fewer torch threads than CPUs, the CPUs we leave idle are theirs to use.
    """
    ncpu = os.cpu_count() or 1
    return max(0, ncpu - torch.get_num_threads()) / ncpu + CONTENDED


def _busy_cpu_s() -> float | None:
    """CPU seconds all processes have spent busy since boot (/proc/stat), None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class QuietWaiter:
    """Before a measurement, wait (within a total budget) until other processes leave the CPUs."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s, self.waited_s = budget_s, 0.0

    def __call__(self, window_s: float = 0.3) -> bool:
        """Return True once a ``window_s`` window had other processes below the contended share."""
        if self.budget_s <= 0:
            return True
        ncpu = os.cpu_count() or 1
        while True:
            busy0, cpu0, t0 = _busy_cpu_s(), time.process_time(), time.perf_counter()
            if busy0 is None:
                return True
            time.sleep(window_s)
            wall = time.perf_counter() - t0
            others = max(0.0, _busy_cpu_s() - busy0 - (time.process_time() - cpu0)) / (wall * ncpu)
            if others <= contended_share():
                return True
            if self.waited_s >= self.budget_s:
                return False
            if self.waited_s == 0:
                log.info("waiting for other processes to leave the CPUs (budget %.0f s)",
                         self.budget_s)
            self.waited_s += wall


def timing_samples(fn: Callable[[], Any], repeats: int, warmup: int,
                   wait: QuietWaiter | None = None) -> dict[str, Any]:
    """Seconds per ``fn()`` call: median / min / max over ``repeats`` samples after ``warmup`` calls.

    This machine is shared, so every sample also measures the CPU time other processes took
    meanwhile (/proc/stat busy time minus our own); a sample where they held more than
    ``contended_share()`` of the CPUs is replaced by a new one, up to ``MAX_EXTRA · repeats`` extra
    samples. The median is over the clean samples when there are any.
    """
    wait = wait or QuietWaiter(0.0)
    wait()
    first = None
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0
    number = 1 if first is None else max(1, math.ceil(MIN_SAMPLE_S / max(first, 1e-6)))
    ncpu = os.cpu_count() or 1
    samples: list[tuple[float, float]] = []  # (seconds per call, others' share of the CPUs)
    clean, limit = 0, contended_share()
    while clean < repeats and len(samples) < repeats * (1 + MAX_EXTRA):
        busy0, cpu0, t0 = _busy_cpu_s(), time.process_time(), time.perf_counter()
        for _ in range(number):
            fn()
        wall = time.perf_counter() - t0
        cpu, busy1 = time.process_time() - cpu0, _busy_cpu_s()
        # /proc/stat counts 10 ms ticks: allow one tick of slack before calling a sample contended
        others = 0.0 if busy0 is None else max(0.0, busy1 - busy0 - cpu - 0.01) / (wall * ncpu)
        samples.append((wall / number, others))
        clean += others <= limit
        if others > limit:
            wait()
    good = [t for t, o in samples if o <= limit] or [t for t, _ in samples]
    return {"median": statistics.median(good), "min": min(good), "max": max(good),
            "n": len(good), "n_samples": len(samples), "n_contended": len(samples) - clean,
            "calls_per_sample": number,
            "others_cpu_share": round(statistics.mean(o for _, o in samples), 3)}


def contention(obj: Any) -> dict[str, int]:
    """How many timed samples, over every timing_samples result inside ``obj``, were contended."""
    total = {"samples": 0, "contended_dropped": 0, "measurements_all_contended": 0}
    if isinstance(obj, dict):
        if "n_contended" in obj:
            all_contended = obj["n_contended"] == obj["n_samples"]
            total["samples"] += obj["n_samples"]
            total["contended_dropped"] += 0 if all_contended else obj["n_contended"]
            total["measurements_all_contended"] += all_contended
        children = obj.values()
    elif isinstance(obj, list):
        children = obj
    else:
        return total
    for child in children:
        for k, v in contention(child).items():
            total[k] += v
    return total


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


class ResultsFile:
    """A benchmark's results JSON: {"stages": {stage: {key: row}}}, every row stamped with
    :func:`provenance` and its finish time, the file rewritten atomically at each :meth:`put`
    (a killed benchmark keeps every finished row); ``ignore``: the tools' own outputs, which do
    not make the commit "+dirty". :meth:`force` makes a stage's rows count
    as missing while keeping each in the file until its replacement is written."""

    def __init__(self, path: str | os.PathLike, command: Sequence[str], repo: str | os.PathLike,
                 ignore: Sequence[str] = ("tools/results", "README.md"),
                 header: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.doc = read_json(self.path) if self.path.exists() else {**(header or {}),
                                                                    "stages": {}}
        self.provenance = provenance(command, repo, ignore)
        self.redo: set[str] = set()
        self.fresh: dict[str, set[str]] = {}

    def get(self, stage: str, key: str) -> Any:
        if stage in self.redo and key not in self.fresh.get(stage, set()):
            return None
        return self.doc["stages"].get(stage, {}).get(key)

    def put(self, stage: str, key: str, row: dict[str, Any]) -> None:
        entry = {**row, **self.provenance,
                 "finished": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
        self.doc["stages"].setdefault(stage, {})[key] = entry
        self.fresh.setdefault(stage, set()).add(key)
        write_json(self.path, self.doc)

    def force(self, stage: str) -> None:
        self.redo.add(stage)
