"""Results files with provenance (command, commit, machine, versions) and the README/docs
sections the tools fill from them."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hebbret._io import read_json, write_bytes, write_json
from hebbret.runtime import load_average
from hebbret.version import __version__


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
                 ignore: Sequence[str] = ("tools/results", "README.md", "docs"),
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


def publish(text: str, readme: str | os.PathLike | None, section: str) -> None:
    """Print a benchmark's tables; with ``readme``, also put them in its ``section``."""
    if readme:
        fill_section(readme, section, text)
    sys.stdout.write(text)


def fill_section(path: str | os.PathLike, name: str, text: str) -> None:
    """Replace what stands between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in the
    file ``path`` (docs/results.md, the README) with ``text``, atomically; the markers must be there."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    old = Path(path).read_text()
    if begin not in old or end not in old:
        raise ValueError(f"{path} has no {begin} ... {end} section to fill")
    head, rest = old.split(begin, 1)
    write_bytes(path, (head + begin + "\n" + text + end + rest.split(end, 1)[1]).encode())


def fmt(value: Any, digits: int = 2) -> str:
    """A table cell: numbers with ``digits`` decimals, None as –, anything else as text."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 2,
                   align: str | None = None) -> str:
    """A GitHub markdown table; ``align``: one of l/r per column (default: first l, rest r)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(fmt(v, digits) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
