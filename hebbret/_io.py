"""Atomic file writes: every artifact is written to a temporary name, then renamed.

A killed process therefore leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # keep the real suffix last: some writers (torch.export) insist on it
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; use the usual mode
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: line {n} is not valid JSON ({e})") from None
    return rows


class JsonLines(Sequence):
    """The rows of a JSONL file as a read-only sequence, each parsed when it is read from a
    memory map: resident memory is one offset per row plus the pages of the rows read (a
    million-item index would take ~400 MB as parsed dicts)."""

    def __init__(self, path: str | os.PathLike, chunk: int = 1 << 24) -> None:
        import mmap

        import numpy as np

        self.path = Path(path)
        size = self.path.stat().st_size
        ends = []
        with open(self.path, "rb") as f:  # newlines found chunk by chunk, nothing kept
            for at in range(0, size, chunk):
                ends.append(np.flatnonzero(np.frombuffer(f.read(chunk), np.uint8) == 10) + at)
        ends = np.concatenate(ends) if ends else np.zeros(0, np.int64)
        self._data: Any = b""
        if size:
            with open(self.path, "rb") as f:
                self._data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            if self._data[size - 1] != 10:
                ends = np.append(ends, size)
        starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
        keep = (ends - starts) > 2  # a row holds at least "{}" and an end; shorter ones may be
        for j in np.flatnonzero(~keep):  # blank (whitespace) lines, which are not rows
            keep[j] = bool(self._data[starts[j]: ends[j]].strip())
        self._starts, self._ends = starts[keep], ends[keep]

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        try:
            return json.loads(self._data[self._starts[i]: self._ends[i]])
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.path}: row {i + 1} is not valid JSON ({e})") from None

    def __iter__(self) -> Iterator[Any]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
