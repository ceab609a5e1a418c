"""Search an index by image: the query images embedded by the model the index was built from
(its weights checked against the sha256 the index records), then ranked results."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_path
from .data import IMAGE_EXTENSIONS
from .dedup import search_distinct
from .embed import embed_images, spec_of
from .index import load_index, search_loaded
from .progress import progress
from .runs import load_run


def search_by_image(index_dir: str | os.PathLike, image_paths: list[str | os.PathLike],
                    k: int = 10, run: str | os.PathLike | None = None, nprobe: int | None = None,
                    ef_search: int | None = None, device: str = "cpu",
                    rows: np.ndarray | None = None, dedup: float | None = None
                    ) -> list[dict[str, Any]]:
    """Embed query images with the model the index was built from, then search (``dedup``: no
    two hits more similar than this threshold, see :func:`hebbret.dedup.search_distinct`).

    ``run`` defaults to the run dir recorded in the index meta; its weights must have the sha256
    the index records. Returns one {"query", "results": [{rank, score, path, label,
    class_name}]} per image.
    """
    loaded = load_index(index_dir)
    meta = loaded[2]
    model, card = model_of_index(index_dir, meta, run)
    queries = embed_images(model, card, list(image_paths), spec_of(meta), device)
    return format_results(search_rows(loaded, queries, k, nprobe, ef_search, str(index_dir),
                                      rows, dedup), [str(p) for p in image_paths])


def search_rows(loaded: Any, queries: np.ndarray, k: int, nprobe: int | None = None,
                ef_search: int | None = None, name: str = "the index",
                rows: np.ndarray | None = None, dedup: float | None = None) -> Any:
    """:func:`hebbret.index.search_loaded`, or with ``dedup`` (a similarity threshold)
    :func:`hebbret.dedup.search_distinct`."""
    search = {"nprobe": nprobe, "ef_search": ef_search, "name": name, "rows": rows}
    if dedup is None:
        return search_loaded(loaded, queries, k, **search)
    return search_distinct(loaded, queries, k, dedup, **search)


def select_rows(items: Any, path_prefix: str | None = None, label: str | None = None,
                rows: list[int] | None = None) -> np.ndarray | None:
    """int64 (R,): the rows of the collection (``items``, one dict per row) whose path starts
    with ``path_prefix``, whose label or class name is ``label`` and that are in ``rows`` (all
    given conditions at once); None when no condition is given (search everything)."""
    if path_prefix is None and label is None and rows is None:
        return None
    keep = np.ones(len(items), dtype=bool)
    if rows is not None:
        wanted = np.asarray(rows, dtype=np.int64)
        bad = wanted[(wanted < 0) | (wanted >= len(items))]
        if len(bad):
            raise ValueError(f"rows {bad[:5].tolist()} are not in the collection (rows "
                             f"0..{len(items) - 1})")
        keep[:] = False
        keep[wanted] = True
    if path_prefix is not None or label is not None:
        for row, it in enumerate(items):
            if path_prefix is not None and not str(it.get("path", "")).startswith(path_prefix):
                keep[row] = False
            elif label is not None and label not in (str(it.get("label")), it.get("class_name")):
                keep[row] = False
    return np.flatnonzero(keep).astype(np.int64)


def model_of_index(index_dir: str | os.PathLike, meta: dict[str, Any],
                   run: str | os.PathLike | None = None) -> tuple[Any, Any]:
    """(model, card) of ``run``, default the run the index records; its weights must have the
    sha256 the index records (the queries must be embedded by the model that embedded it)."""
    run = run or meta.get("model_run")
    if not run:
        raise ValueError(f"{index_dir} records no model run; pass the run dir that made it")
    model, card = load_run(run)
    if meta.get("model_sha256") and card.weights_sha256 != meta["model_sha256"]:
        raise ValueError(f"{index_dir} was built from model sha256 {meta['model_sha256'][:12]}, "
                         f"but {run} holds sha256 {card.weights_sha256[:12]}; embed the "
                         f"queries with the same model as the index")
    return model, card


def format_results(found: tuple[np.ndarray, np.ndarray, list[dict], dict[str, Any]],
                   names: list[str]) -> list[dict[str, Any]]:
    """Ranked results per query from ``search_index``'s output."""
    scores, ids, items, _ = found
    out = []
    for name, row_scores, row_ids in zip(names, scores, ids, strict=True):
        results = [{"rank": r + 1, "score": float(s), "row": int(i), **items[i]}
                   for r, (s, i) in enumerate(zip(row_scores, row_ids, strict=True)) if i >= 0]
        out.append({"query": name, "results": results})
    return out


def query_images(folder: str | os.PathLike) -> list[Path]:
    """The image files under ``folder`` (recursive, sorted; hidden files skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"query folder not found: {folder}")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise ValueError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return paths


def search_folder(index_dir: str | os.PathLike, folder: str | os.PathLike,
                  out: str | os.PathLike, k: int = 10, run: str | os.PathLike | None = None,
                  nprobe: int | None = None, ef_search: int | None = None, device: str = "cpu",
                  rows: np.ndarray | None = None, batch_size: int = 256,
                  quiet: bool = False, dedup: float | None = None) -> dict[str, int]:
    """Search with every image under ``folder``, embedded ``batch_size`` at a time: one JSON
    line per query into ``out`` ({"query", "results"}, or {"query", "error"} for a file that
    cannot be read), written batch by batch into a temporary file beside ``out`` and renamed
    onto it at the end (a killed run leaves no half file). Returns {"queries", "errors"}."""
    paths = query_images(folder)
    loaded = load_index(index_dir)
    model, card = model_of_index(index_dir, loaded[2], run)
    embed = functools.partial(embed_images, model, card, desc=spec_of(loaded[2]), device=device)
    counts = {"queries": 0, "errors": 0}
    bar = progress(total=len(paths), desc="search", unit="img", quiet=quiet)
    with atomic_path(out) as tmp, open(tmp, "w") as f:
        for start in range(0, len(paths), batch_size):
            batch = [str(p) for p in paths[start: start + batch_size]]
            vecs, good, lines = _embed_each(embed, batch)
            if good:
                found = search_rows(loaded, vecs, k, nprobe, ef_search, str(index_dir), rows,
                                    dedup)
                lines.update(zip(good, format_results(found, good), strict=True))
            for name in batch:
                f.write(json.dumps(lines[name]) + "\n")
                counts["errors" if "error" in lines[name] else "queries"] += 1
            f.flush()
            bar.update(len(batch))
    bar.close()
    return counts


def _embed_each(embed: Any, batch: list[str]) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """(vectors of the readable files, their names, {name: error line} of the others): the
    batch at once, file by file only when one of them fails."""
    try:
        return embed(batch), batch, {}
    except (OSError, ValueError) as e:
        if len(batch) == 1:
            return np.zeros((0, 0), np.float32), [], {batch[0]: {"query": batch[0],
                                                                 "error": str(e)}}
    vecs, good, errors = [], [], {}
    for name in batch:
        v, g, err = _embed_each(embed, [name])
        vecs += [v] if g else []
        good += g
        errors.update(err)
    return (np.concatenate(vecs) if vecs else np.zeros((0, 0), np.float32)), good, errors
