"""Timing on shared CPUs: samples taken while the machine is quiet, contended ones replaced."""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch

T = TypeVar("T")
log = logging.getLogger(__name__)


def timed_call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
    """(fn(*args, **kwargs), its wall time in seconds)."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, round(time.perf_counter() - t0, 2)


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
