"""``hebbret index update``: bring an index up to date with its image folder, embedding only
the files that are new or changed since it was built, and dropping the rows of files that are
gone.

Each update writes a new *generation* ``INDEX/gen-NNNNNN/`` — a complete index dir
(``index.faiss``, ``items.jsonl``, ``meta.json``, ``listing.npy``, ``index.ivfdata`` when on
disk) plus ``embeddings/`` (the vectors of its rows, for search by row) — and then publishes it
by rewriting the pointer file ``INDEX/CURRENT`` atomically (:func:`hebbret.index.current_dir`).
Readers open the generation the pointer names, so they see the old index or the new one, never
a mix; a killed update leaves an unpublished dir that the next update removes before doing the
job again. The generation before the current one is kept until the next update (readers that
read the pointer just before the switch), older ones are removed. Updates of one index take
turns through an ``fcntl.flock`` on ``INDEX/.update.lock`` (released by the kernel when its
holder dies, even by kill -9).

Which files changed: ``listing.npy`` holds int64 (N, 2) size and mtime_ns of each row's file
when it was embedded. An index from ``index build`` has none; its rows count as unchanged when
their file's mtime is not after its embeddings' ``meta.json`` was written.

How the index changes: rows are FAISS ids (row *i* is line *i* of ``items.jsonl``). Kept rows
keep their order, new ones are appended. Flat and other flat-code indexes remove rows with
``remove_ids`` (which compacts the ids); IVF indexes (also under a PCA) remove them from their
inverted lists and the remaining ids are renumbered in place; an on-disk IVF writes new lists
from the generation's vectors with the same trained quantiser (its old lists are memory-mapped
by readers and never touched); an index FAISS cannot remove from (HNSW) is refilled from the
vectors. Nothing is trained again: ``meta.json`` records the rows added since training, and a
rebuild is advised once they are more than half of the index.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from numpy.lib.format import open_memmap

from ._io import atomic_path, read_json, write_bytes, write_json, write_jsonl
from .artifacts import CURRENT, EMBEDDINGS, INDEX, INDEX_FILES, ITEMS, IVFDATA, LISTING, META
from .config import EMBED_BATCH_SIZE, NAMED_DATASETS
from .data import ImageFolder
from .embed import embed_rows, load_embeddings, spec_of
from .index import (
    GENERATION_PREFIX,
    METRICS,
    as_float32,
    current_dir,
    fill_on_disk,
    load_index,
)
from .runtime import pick_device
from .search import model_of_index
from .version import __version__

log = logging.getLogger(__name__)

LOCK = ".update.lock"
VECTORS = "embeddings"  # a generation's embeddings dir
STALE = -1  # a listing's size for a row whose file may have changed since it was embedded
REBUILD_SHARE = 0.5  # rows added since training, as a share of the index, past which to rebuild


class IndexBusy(ValueError):
    """Another update holds the index's lock."""


@contextlib.contextmanager
def update_lock(index_dir: Path, wait: bool = True) -> Iterator[None]:
    """Hold ``INDEX/.update.lock`` exclusively; ``wait`` False: raise :class:`IndexBusy` at
    once when another process holds it."""
    with open(index_dir / LOCK, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise IndexBusy(f"another update of {index_dir} is running (it holds "
                                f"{index_dir / LOCK}); try again when it is done") from None
            log.info("waiting for another update of %s to finish", index_dir)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _tidy(index_dir: Path) -> None:
    """Remove what no reader opens any more: generation dirs other than the current one (a
    killed update's unpublished one, the one before the current) and, once generations
    exist, the files of the original build at the top."""
    cur = current_dir(index_dir)
    for gen in index_dir.glob(f"{GENERATION_PREFIX}*"):
        if gen != cur:
            log.info("removing %s (not the current generation)", gen)
            shutil.rmtree(gen, ignore_errors=True)
    if cur != index_dir:
        for name in (IVFDATA, LISTING, *INDEX_FILES):
            (index_dir / name).unlink(missing_ok=True)
    for tmp in index_dir.glob(f".{CURRENT}.*"):  # a pointer write that was killed
        tmp.unlink(missing_ok=True)


def _folder(index_dir: Path, meta: dict[str, Any], items: Any, folder: str | None,
            card: Any) -> ImageFolder:
    """The image folder to bring the index up to date with (default: the one it records),
    checked to be the index's: same labeled layout, and some of its files are there."""
    if meta.get("data") in NAMED_DATASETS:
        raise ValueError(f"{index_dir} was embedded from the named dataset {meta['data']!r}; "
                         f"`index update` reads image folders")
    root = folder or meta.get("data_root")
    if not root:
        raise ValueError(f"{index_dir} records no image folder; pass FOLDER")
    if not Path(root).is_dir():
        raise FileNotFoundError(f"image folder not found: {root}" + (
            "" if folder else f" (the folder {index_dir} was built from); pass FOLDER"))
    spec = card.input
    ds = ImageFolder(root, spec.in_chans, spec.img_size, None, spec.mean, spec.std)
    was_labeled = len(items) > 0 and items[0].get("label", -1) >= 0
    if was_labeled != bool(ds.classes):
        raise ValueError(f"{root} does not match {index_dir}: the index is "
                         f"{'' if was_labeled else 'not '}labeled by class sub-folders but the "
                         f"folder is{'' if ds.classes else ' not'}")
    return ds


def _stat_listing(root: str, paths: list[str], since_ns: int | None = None) -> np.ndarray:
    """int64 (N, 2): size and mtime_ns of each file (STALE when it is gone, or was modified
    at or after ``since_ns``, within the clock's tick)."""
    out = np.full((len(paths), 2), STALE, np.int64)
    for row, path in enumerate(paths):
        try:
            st = os.stat(os.path.join(root, path))
        except OSError:
            continue
        if since_ns is None or st.st_mtime_ns < since_ns:  # a tick later: may have changed
            out[row] = (st.st_size, st.st_mtime_ns)
    return out


def _listing(gen: Path, meta: dict[str, Any], paths: list[str], root: str) -> np.ndarray:
    """The files' size and mtime when the index's rows were embedded (see the module doc)."""
    if (gen / LISTING).is_file():
        listing = np.load(gen / LISTING)
        if listing.shape == (len(paths), 2):
            return listing
    marker = Path(meta.get("embeddings") or "") / META
    since = (marker if marker.is_file() else gen / META).stat().st_mtime_ns
    return _stat_listing(root, paths, since)


def _known_bad(meta: dict[str, Any], root: str) -> dict[str, list[int]]:
    """Files an earlier embedding could not decode, with the [size, mtime_ns] they had then:
    an update tries them again only once they change. A built index: its embeddings' skipped
    files, modified before they were written."""
    if "undecodable" in meta:
        return meta["undecodable"]
    marker = Path(meta.get("embeddings") or "") / META
    if not marker.is_file():
        return {}
    paths = read_json(marker).get("skipped_paths") or []
    listing = _stat_listing(root, paths, marker.stat().st_mtime_ns).tolist()
    return {p: v for p, v in zip(paths, listing, strict=True) if v[0] != STALE}


def _plan(index_dir: Path, paths: list[str], listing: np.ndarray, ds: ImageFolder,
          bad: dict[str, list[int]]
          ) -> tuple[np.ndarray, list[int], np.ndarray, dict[str, list[int]]]:
    """(index rows kept int64 (K,), folder rows to embed, the folder's listing (M, 2), the
    known undecodable files still there unchanged): a row is kept when its file is in the
    folder with the size and mtime it was embedded with."""
    now = _stat_listing(ds.root, [it.path for it in ds.items])
    where = {it.path: i for i, it in enumerate(ds.items)}
    keep, kept, seen = [], set(), 0
    for row, path in enumerate(paths):
        i = where.get(path)
        seen += i is not None
        if i is not None and listing[row, 0] != STALE and path not in kept and (
                listing[row] == now[i]).all():
            keep.append(row)
            kept.add(path)
    if paths and not seen:
        raise ValueError(f"{ds.root} does not match {index_dir}: none of the index's "
                         f"{len(paths)} images are in it; build a new index for it")
    still_bad = {p: v for p, v in bad.items() if p in where and now[where[p]].tolist() == v}
    new = [i for i, it in enumerate(ds.items) if it.path not in kept and it.path not in still_bad]
    return np.asarray(keep, np.int64), new, now, still_bad


def update_index(index_dir: str | os.PathLike, folder: str | os.PathLike | None = None,
                 run: str | os.PathLike | None = None, device: str = "cpu",
                 batch_size: int = EMBED_BATCH_SIZE, wait: bool = True,
                 quiet: bool = False) -> dict[str, Any]:
    """Bring ``index_dir`` up to date with ``folder`` (default: the folder it was built from)
    and publish the result as a new generation (see the module doc). ``run``: the model to
    embed new files with (default: the index's; its sha256 must match). Returns a summary:
    {"index", "generation", "count", "added", "removed", "skipped_files", "method",
    "rebuild_advised", ...}."""
    index_dir = Path(index_dir)
    load_index(index_dir)  # names a missing or broken index before anything is locked
    with update_lock(index_dir, wait):
        _tidy(index_dir)
        cur = current_dir(index_dir)
        _, items, meta = load_index(index_dir)
        model, card = model_of_index(index_dir, meta, run)
        ds = _folder(index_dir, meta, items, None if folder is None else str(folder), card)
        paths = [it["path"] for it in items]
        keep, new, now, bad = _plan(index_dir, paths, _listing(cur, meta, paths, ds.root), ds,
                                    _known_bad(meta, ds.root))
        if len(keep) == len(paths) and not new:
            log.info("%s is up to date with %s (%d rows)", index_dir, ds.root, len(paths))
            return {"index": str(index_dir), "generation": meta.get("generation", 0),
                    "count": len(paths), "added": 0, "removed": 0, "skipped_files": 0,
                    "method": "none", "rebuild_advised": False}
        gen = int(meta.get("generation", 0)) + 1
        out = index_dir / f"{GENERATION_PREFIX}{gen:06d}"
        shutil.rmtree(out, ignore_errors=True)
        try:
            (out / VECTORS).mkdir(parents=True)
            added, skipped = _embed_new(model, meta, ds, new, out, device, batch_size, quiet)
            bad.update({ds.items[i].path: now[i].tolist() for i in skipped.rows})
            summary = _write_generation(cur, {**meta, "undecodable": bad}, ds, paths, keep,
                                        added, now, out, gen)
        except OSError as e:  # a full disk: the generation is dropped, the index unchanged
            shutil.rmtree(out, ignore_errors=True)
            raise OSError(e.errno, f"{e.strerror or e} while writing {out}; {index_dir} is "
                          f"unchanged", e.filename) from None
        summary.update(skipped_files=skipped.count, skipped_paths=skipped.paths)
        log.debug("%s is complete; publishing it", out)
        write_bytes(index_dir / CURRENT, f"{out.name}\n".encode())  # the switch
    log.info("%s: generation %d published (%d rows: %d added, %d removed, %d files skipped)",
             index_dir, gen, summary["count"], summary["added"], summary["removed"],
             skipped.count)
    return {"index": str(index_dir), **summary}


def _embed_new(model: Any, meta: dict[str, Any], ds: ImageFolder, rows: list[int], out: Path,
               device: str, batch_size: int, quiet: bool) -> tuple[list[int], Any]:
    """Embed folder ``rows`` into ``out/.new.npy`` (undecodable files skipped and counted as
    everywhere else); returns the rows embedded and the skipped files."""
    dev = pick_device(device)
    model.to(dev).eval()
    dtype = read_json(Path(meta["embeddings"]) / META).get("dtype", "float32")
    log.info("embedding %d new or changed files of %s", len(rows), ds.root)
    return embed_rows(model, ds, rows, out / ".new.npy", batch_size, dtype, dev, spec_of(meta),
                      0, quiet)


def _write_generation(cur: Path, meta: dict[str, Any], ds: ImageFolder, paths: list[str],
                      keep: np.ndarray, added: list[int], now: np.ndarray, out: Path, gen: int
                      ) -> dict[str, Any]:
    """Write generation ``out``: its vectors (kept rows, then the new ones), index, items,
    listing and, last, meta.json; returns what changed."""
    old, _, emb_meta = load_embeddings(meta["embeddings"], check_finite=False, read_items=False)
    n_old = int(meta["count"])
    if len(old) != n_old:
        raise ValueError(f"{meta['embeddings']} has {len(old)} rows but the index {cur} has "
                         f"{n_old}; rebuild the index")
    fresh = np.load(out / ".new.npy", mmap_mode="r")
    vectors = _write_vectors(out / VECTORS, old, keep, fresh)
    del fresh
    (out / ".new.npy").unlink()
    removed = np.setdiff1d(np.arange(n_old), keep)
    index, method = _updated_index(cur, meta, removed, vectors, len(keep), out)
    log.debug("wrote %s: %d rows (%s)", out / INDEX, index.ntotal, method)
    where = {it.path: i for i, it in enumerate(ds.items)}
    rows = [where[paths[r]] for r in keep] + list(added)
    write_jsonl(out / ITEMS, [{"path": ds.items[i].path, "label": ds.items[i].label,
                               "class_name": ds.items[i].class_name} for i in rows])
    os.link(out / ITEMS, out / VECTORS / ITEMS)
    write_json(out / VECTORS / META, {**emb_meta, "count": len(rows), "data_root": ds.root,
                                      "updated_from": meta["embeddings"]})
    with atomic_path(out / LISTING) as tmp, open(tmp, "wb") as f:
        np.save(f, now[np.asarray(rows, np.int64)].reshape(-1, 2))
    change = {"generation": gen, "count": int(index.ntotal), "added": len(added),
              "removed": int(len(removed)), "method": method,
              **_training_share(meta, len(added), int(index.ntotal))}
    write_json(out / META, {
        **meta, **change, "updated_at": time.time(), "data_root": ds.root,
        "embeddings": str((out / VECTORS).resolve()), "hebbret_version": __version__,
        **({"ivfdata_bytes": (out / IVFDATA).stat().st_size,
            "ivfdata_path": str((out / IVFDATA).resolve())} if meta.get("on_disk") else {})})
    return change


def _training_share(meta: dict[str, Any], added: int, count: int) -> dict[str, Any]:
    """{"rows_added_since_training", "rebuild_advised"}: a trained index (IVF, PQ, PCA) is
    advised a rebuild once more than REBUILD_SHARE of its rows came after its training."""
    trained = not faiss.index_factory(int(meta["dim"]), meta["factory"],
                                      METRICS[meta["metric"]]).is_trained
    since = int(meta.get("rows_added_since_training", 0)) + added if trained else 0
    advised = trained and since > REBUILD_SHARE * count
    if advised:
        log.warning("%d of the %d rows were added after the index was trained: its clustering "
                    "may no longer fit the collection; rebuild it with `hebbret index build`",
                    since, count)
    return {"rows_added_since_training": since, "rebuild_advised": bool(advised)}


def _write_vectors(out: Path, old: np.ndarray, keep: np.ndarray, fresh: np.ndarray,
                   chunk: int = 65536) -> np.ndarray:
    """``out/embeddings.npy``: rows ``keep`` of ``old`` (N, D), then ``fresh`` (A, D), copied
    chunk by chunk; returns it memory-mapped."""
    n = len(keep) + len(fresh)
    with atomic_path(out / EMBEDDINGS) as tmp:
        dst = open_memmap(tmp, mode="w+", dtype=old.dtype, shape=(n, old.shape[1]))
        for i in range(0, len(keep), chunk):
            part = keep[i: i + chunk]
            dst[i: i + len(part)] = old[part]
        for i in range(0, len(fresh), chunk):
            part = fresh[i: i + chunk]
            dst[len(keep) + i: len(keep) + i + len(part)] = part
        dst.flush()
        del dst
    return np.load(out / EMBEDDINGS, mmap_mode="r")


def _updated_index(cur: Path, meta: dict[str, Any], removed: np.ndarray, vectors: np.ndarray,
                   kept: int, out: Path, chunk: int = 65536) -> tuple[faiss.Index, str]:
    """The current index without rows ``removed`` (sorted) and with ``vectors[kept:]``
    appended, written to ``out/index.faiss`` (and ``out/index.ivfdata`` on disk); returns it
    and how it was changed."""
    normalize = meta["normalization"] == "l2"
    if meta.get("on_disk"):
        trained = _emptied(faiss.read_index(str(cur / INDEX), faiss.IO_FLAG_SKIP_IVF_DATA))
        index = fill_on_disk(trained, vectors, normalize, chunk, 262_144, out / ".build",
                             meta["factory"])
        ivf = faiss.extract_index_ivf(index)
        faiss.downcast_InvertedLists(ivf.invlists).filename = str((out / IVFDATA).resolve())
        os.replace(out / ".build" / IVFDATA, out / IVFDATA)
        shutil.rmtree(out / ".build")
        method = "on-disk lists rewritten from the vectors"
    else:
        index = faiss.read_index(str(cur / INDEX))
        method = "remove_ids + add"
        try:
            _remove_rows(index, removed)
            start = kept
        except RuntimeError as e:  # e.g. HNSW: FAISS cannot remove from it
            log.info("%s cannot remove rows (%s): refilled from the vectors", meta["factory"],
                     str(e).strip().splitlines()[-1][:120])
            index.reset()
            method, start = "refilled from the vectors (no removal in FAISS)", 0
        for i in range(start, len(vectors), chunk):
            index.add(as_float32(vectors[i: i + chunk], normalize))
    if index.ntotal != len(vectors):
        raise RuntimeError(f"the updated index holds {index.ntotal} rows, expected "
                           f"{len(vectors)}")
    try:
        faiss.write_index(index, str(out / INDEX))
    except RuntimeError as e:  # a full disk, as FAISS reports it
        raise OSError(f"cannot write {out / INDEX}: {str(e).strip().splitlines()[-1]}") from None
    return index, method


def _emptied(index: faiss.Index) -> faiss.Index:
    """An IVF index read without its lists, given empty in-memory lists (its trained
    quantiser and transforms kept)."""
    ivf = faiss.extract_index_ivf(index)
    lists = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(lists, True)
    lists.this.disown()  # the index owns it now
    ivf.ntotal = 0
    index.ntotal = 0
    return index


def _remove_rows(index: faiss.Index, removed: np.ndarray) -> None:
    """Remove rows ``removed`` (sorted int64) so that the rows left are 0..K-1 in order:
    flat-code indexes compact their ids themselves; the ids in IVF lists are renumbered.
    Raises RuntimeError when FAISS cannot remove from the index."""
    if not len(removed):
        return
    n = index.remove_ids(faiss.IDSelectorBatch(removed))
    if n != len(removed):
        raise ValueError(f"removed {n} rows of the index, expected {len(removed)}")
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return
    lists = ivf.invlists
    for lst in range(ivf.nlist):
        size = lists.list_size(lst)
        if size:
            ids = faiss.rev_swig_ptr(lists.get_ids(lst), size)
            ids -= np.searchsorted(removed, ids)
