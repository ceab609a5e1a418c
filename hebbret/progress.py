"""Progress bars that suit where they are written.

On a terminal: tqdm's live bar. Anywhere else (CI, ``nohup``, a log file): the same bar as a
plain line at most every ``NON_TTY_INTERVAL`` seconds and at the end, never carriage-return
redraws. ``quiet``: nothing.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from tqdm import tqdm

NON_TTY_INTERVAL = 30.0  # seconds between lines when stderr is not a terminal


class _Lines:
    """A file for tqdm that turns each redraw (``\\r`` + bar + padding) into one line."""

    def __init__(self, file: IO[str]) -> None:
        self.file = file

    def write(self, s: str) -> None:
        s = s.replace("\r", "").rstrip()
        if s:
            self.file.write(s + "\n")

    def flush(self) -> None:
        self.file.flush()


def progress(iterable: Any = None, *, total: float | None = None, desc: str = "",
             unit: str = "it", quiet: bool = False, file: IO[str] | None = None,
             **kwargs: Any) -> tqdm:
    """A tqdm bar over ``iterable`` or ``total`` units, written for ``file`` (default stderr)."""
    file = file if file is not None else sys.stderr
    tty = hasattr(file, "isatty") and file.isatty()
    if not tty:
        kwargs = {**kwargs, "file": _Lines(file), "mininterval": NON_TTY_INTERVAL,
                  "maxinterval": NON_TTY_INTERVAL, "dynamic_ncols": False, "ncols": 100}
    else:
        kwargs = {"dynamic_ncols": True, **kwargs, "file": file}
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=quiet, **kwargs)
