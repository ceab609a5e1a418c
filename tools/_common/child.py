"""Child processes whose cost is their own: wall seconds, CPU seconds and peak memory (wait4)."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)


def run_child(cmd: Sequence[str]) -> dict[str, Any]:
    """Run ``cmd`` (stdout discarded, stderr shown) and wait for it: its wall seconds, CPU
    seconds (user + system) and peak RSS in GiB, all from ``os.wait4`` (this child alone, not
    the benchmark around it). Raises RuntimeError naming the command when it fails."""
    log.info("running %s", " ".join(cmd))
    t0 = time.perf_counter()
    child = subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {code}")
    return {"wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2)}
