"""Packed image cache: decode a folder once, then batch by array indexing.

A folder of images at a given size and channel count is decoded once, with all cores, into
uint8 ``(N, H, W, C)`` ``.npy`` shards (memory-mapped when read) plus ``items.jsonl`` and
``meta.json``. Its key hashes the folder's listing (every path, size and mtime), the size and
the channels, so a changed folder is packed again and never silently reused; the folder stays
the source of truth. A cache dir is built under a temporary name and renamed into place, so a
killed build never looks complete. Files that cannot be decoded keep their row (all zeros,
``valid`` False) and are skipped by the loaders exactly as when reading the folder.

Where: ``$HEBBRET_CACHE_DIR`` or ``~/.cache/hebbret``, one sub-folder ``packed/<key>`` per
(folder, size, channels); delete it to clear the cache. ``HEBBRET_CACHE=0`` turns it off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .._io import read_json, read_jsonl, write_json, write_jsonl
from ..artifacts import ITEMS, META
from ..progress import progress
from .folders import ImageDataset, ImageFolder, Item, load_image

log = logging.getLogger(__name__)

PACK_FORMAT = 1
SHARD_BYTES = 1 << 30  # at most this many bytes of pixels per .npy shard


def cache_root() -> Path:
    """``$HEBBRET_CACHE_DIR`` or ``~/.cache/hebbret``."""
    return Path(os.environ.get("HEBBRET_CACHE_DIR") or Path.home() / ".cache" / "hebbret")


def cache_enabled() -> bool:
    return os.environ.get("HEBBRET_CACHE", "1").lower() not in ("0", "false", "no", "off")


def folder_key(dataset: ImageFolder) -> str:
    """sha256 of the folder's listing (path, size, mtime of every image), size and channels."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": PACK_FORMAT, "root": dataset.root,
                         "img_size": list(dataset.img_size), "in_chans": dataset.in_chans,
                         "classes": dataset.classes}).encode())
    for it in dataset.items:
        try:
            st = os.stat(os.path.join(dataset.root, it.path))
            h.update(f"\0{it.path}\0{it.label}\0{st.st_size}\0{st.st_mtime_ns}".encode())
        except OSError:
            h.update(f"\0{it.path}\0{it.label}\0missing".encode())
    return h.hexdigest()


class _Decode(Dataset):
    """(uint8 (H, W, C) or None, row) per image of a folder, for the packing workers."""

    def __init__(self, folder: ImageFolder) -> None:
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int) -> tuple[np.ndarray | None, int]:
        f = self.folder
        try:
            return load_image(os.path.join(f.root, f.items[i].path), f.in_chans, f.img_size), i
        except Exception:  # noqa: BLE001 - any undecodable file is a skipped row
            return None, i


def _first(batch: list) -> list:
    return batch


def pack_folder(folder: ImageFolder, out: str | os.PathLike, workers: int | None = None,
                quiet: bool = True, key: str | None = None) -> Path:
    """Decode every image of ``folder`` into a packed cache dir ``out`` (replaced if present),
    built under a temporary name and renamed into place."""
    out = Path(out)
    h, w = folder.img_size
    c = folder.in_chans
    n = len(folder)
    per_shard = max(1, SHARD_BYTES // (h * w * c))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    log.info("packing %d images of %s at %d×%d×%d into %s", n, folder.root, h, w, c, out)
    try:
        key = key or folder_key(folder)
        _fill(folder, tmp, per_shard, workers, quiet, key)
        _publish(tmp, out, key)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    meta = read_json(out / META)
    log.info("packed %d images of %s (%d undecodable) into %s", n, folder.root, meta["skipped"],
             out)
    return out


def _fill(folder: ImageFolder, tmp: Path, per_shard: int, workers: int | None, quiet: bool,
          key: str) -> None:
    """Decode ``folder`` into the shards of ``tmp``; its meta.json is written last."""
    n = len(folder)
    h, w = folder.img_size
    c = folder.in_chans
    shards = [np.lib.format.open_memmap(tmp / f"images-{s:05d}.npy", mode="w+", dtype=np.uint8,
                                        shape=(min(per_shard, n - s * per_shard), h, w, c))
              for s in range((n + per_shard - 1) // per_shard)]
    valid = np.zeros(n, dtype=bool)
    if workers is None:  # worker start-up costs more than it saves on small folders
        workers = min(8, os.cpu_count() or 1) if n >= 2048 else 0
    loader = DataLoader(_Decode(folder), batch_size=256, num_workers=workers, collate_fn=_first)
    for batch in progress(loader, desc="packing", unit="batch", quiet=quiet):
        for arr, i in batch:
            if arr is not None:
                shards[i // per_shard][i % per_shard] = arr
                valid[i] = True
    for s in shards:
        s.flush()
    del shards
    np.save(tmp / "valid.npy", valid)
    write_jsonl(tmp / ITEMS, [{"path": it.path, "label": it.label,
                                       "class_name": it.class_name} for it in folder.items])
    write_json(tmp / META, {
        "format": PACK_FORMAT, "root": folder.root, "count": n, "shape": [h, w, c],
        "rows_per_shard": per_shard, "classes": folder.classes, "skipped": int(n - valid.sum()),
        "key": key})


class PackedImages(ImageDataset):
    """A packed cache dir as a dataset: rows, labels and decoding identical to its folder."""

    batchable = True

    def __init__(self, cache_dir: str | os.PathLike, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        cache_dir = Path(cache_dir)
        meta = read_json(cache_dir / META)
        h, w, c = meta["shape"]
        super().__init__(c, (h, w), mean, std)
        self.cache_dir, self.meta, self.root = cache_dir, meta, meta["root"]
        self.classes = meta["classes"]
        self.items = [Item(r["path"], r["label"], r["class_name"])
                      for r in read_jsonl(cache_dir / ITEMS)]
        self.valid = np.load(cache_dir / "valid.npy")
        self.per_shard = meta["rows_per_shard"]
        self.shards = [np.load(p, mmap_mode="r")
                       for p in sorted(cache_dir.glob("images-*.npy"))]

    def uint8_rows(self, rows: np.ndarray) -> np.ndarray:
        """uint8 (len(rows), H, W, C) for dataset ``rows`` (zeros where not decodable)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(self.shards) == 1:
            return self.shards[0][rows]
        out = np.empty((len(rows), *self.shards[0].shape[1:]), dtype=np.uint8)
        shard, offset = np.divmod(rows, self.per_shard)
        for s in np.unique(shard):
            sel = shard == s
            out[sel] = self.shards[s][offset[sel]]
        return out

    def raw(self, i: int) -> np.ndarray:
        return self.uint8_rows(np.array([i]))[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, int]:
        if not self.valid[i]:
            return None, self.items[i].label, i
        return self._to_tensor(self.raw(i)), self.items[i].label, i


def _publish(tmp: Path, out: Path, key: str) -> None:
    """Move the finished cache ``tmp`` to ``out``, unless another process published the same
    key first (then ``tmp`` is dropped); an outdated ``out`` is renamed aside, never deleted
    under a reader's feet before the new one is in place."""
    if _complete(out, key):
        shutil.rmtree(tmp)
        return
    aside = None
    if out.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        try:
            os.replace(out, aside / "cache")
        except OSError:  # another process moved it meanwhile
            pass
    try:
        os.replace(tmp, out)
    except OSError:
        if not _complete(out, key):
            raise
        shutil.rmtree(tmp)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _complete(out: Path, key: str) -> bool:
    return (out / META).exists() and read_json(out / META).get("key") == key


def open_packed(folder: ImageFolder, root: str | os.PathLike | None = None,
           workers: int | None = None, quiet: bool = True) -> PackedImages:
    """The packed cache of ``folder`` (built on first use, or when the folder changed)."""
    key = folder_key(folder)
    out = Path(root or cache_root()) / "packed" / key[:24]
    if not _complete(out, key):
        pack_folder(folder, out, workers, quiet, key)
    return PackedImages(out, folder.mean.flatten().tolist(), folder.std.flatten().tolist())

