"""Near-duplicate images in an index: pairs of mutual nearest neighbours above a similarity
threshold (FAISS searches over the vectors the index itself stores), joined into groups
(connected components), and the same threshold applied to a result list (``--dedup``)."""

from __future__ import annotations

import logging
import os
from typing import Any

import faiss
import numpy as np

from .config import DEDUP_NEIGHBOURS, DEDUP_THRESHOLD
from .index import load_index, search_loaded, set_search_params
from .progress import progress

log = logging.getLogger(__name__)


def _searched(index: faiss.Index) -> faiss.Index:
    """The index the search runs in: the inner one of a pre-transform (PCA, L2norm ...), whose
    stored vectors are already transformed, with a direct map on an IVF so that rows can be
    read back (built once per loaded index)."""
    index = faiss.downcast_index(index)
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) \
        else index
    ivf = faiss.try_extract_index_ivf(inner)
    if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
        ivf.make_direct_map()
    return inner


def stored_vectors(index: faiss.Index, rows: np.ndarray) -> np.ndarray:
    """float32 (R, d): rows (int64 (R,)) as ``index`` stores them, in the space it searches
    (after its pre-transform; decoded from its codes for SQ / PQ)."""
    return _searched(index).reconstruct_batch(np.ascontiguousarray(rows, dtype=np.int64))


def _check_metric(meta: dict[str, Any], name: str) -> None:
    if meta.get("metric") != "ip":
        raise ValueError(f"{name} ranks by {meta.get('metric')} distance; near-duplicates are "
                         f"found by similarity: build the index with --metric ip")


def components(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """int64 (n,): a component label per node (its smallest member) of the graph whose edges
    are ``src[i] -- dst[i]``: labels flow along edges, then jump to their roots, until stable."""
    label = np.arange(n, dtype=np.int64)
    while True:
        low = np.minimum(label[src], label[dst])
        before = label.copy()
        np.minimum.at(label, src, low)
        np.minimum.at(label, dst, low)
        label = label[label]
        if np.array_equal(label, before):
            return label


def similar_pairs(index: faiss.Index, threshold: float, neighbours: int = DEDUP_NEIGHBOURS,
                  chunk: int = 4096, quiet: bool = False
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of rows each among the other's ``neighbours`` nearest rows, with a similarity
    in ``index`` above ``threshold``, once each: (src int64 (P,), dst int64 (P,), similarity
    float32 (P,)) with src < dst, from one FAISS search per ``chunk`` rows over the vectors the
    index stores. Mutual neighbours keep a crowd of similar-looking images from chaining into
    one group; a few copies of one image are each other's nearest anyway."""
    inner, n = _searched(index), index.ntotal
    src, dst, sim = [], [], []
    for start in progress(range(0, n, chunk), desc="dedup", unit="chunk", quiet=quiet):
        rows = np.arange(start, min(n, start + chunk), dtype=np.int64)
        found_sim, found = inner.search(stored_vectors(index, rows), min(neighbours + 1, n))
        query = np.repeat(rows, found.shape[1])
        keep = (found.ravel() >= 0) & (found.ravel() != query) & (found_sim.ravel() > threshold)
        src.append(query[keep])
        dst.append(found.ravel()[keep])
        sim.append(found_sim.ravel()[keep])
    src, dst, sim = np.concatenate(src), np.concatenate(dst), np.concatenate(sim)
    directed = src * n + dst
    mutual = np.isin(dst * n + src, directed) & (src < dst)
    return src[mutual], dst[mutual], sim[mutual]


def groups_of(n: int, src: np.ndarray, dst: np.ndarray) -> list[list[int]]:
    """The connected components with ≥ 2 of the ``n`` rows joined by edges ``src -- dst``,
    largest first, each in row order."""
    label = components(n, src, dst)
    nodes = np.unique(np.concatenate([src, dst]))
    nodes = nodes[np.argsort(label[nodes], kind="stable")]
    groups = np.split(nodes, np.flatnonzero(np.diff(label[nodes])) + 1) if len(nodes) else []
    return sorted((g.tolist() for g in groups), key=lambda g: (-len(g), g[0]))


def near_duplicates(index_dir: str | os.PathLike, threshold: float = DEDUP_THRESHOLD,
                    chunk: int = 4096, quiet: bool = False) -> dict[str, Any]:
    """Groups of near-duplicate rows: mutual nearest neighbours (:func:`similar_pairs`) whose
    similarity in the index (cosine on an ``ip`` index of normalised vectors) exceeds
    ``threshold``, joined transitively.

    An IVF searches with the nprobe it records (approximate: a pair in lists it does not probe
    is missed). Returns {"threshold", "rows", "pairs", "groups": [{"rows", "paths",
    "labels"}, ...] largest first, members in row order}.
    """
    return duplicate_groups(load_index(index_dir), threshold, chunk, quiet, str(index_dir))


def duplicate_groups(loaded: tuple[faiss.Index, Any, dict[str, Any]],
                     threshold: float = DEDUP_THRESHOLD, chunk: int = 4096, quiet: bool = False,
                     name: str = "the index") -> dict[str, Any]:
    """:func:`near_duplicates` of an index opened by :func:`hebbret.index.load_index`."""
    index, items, meta = loaded
    _check_metric(meta, name)
    set_search_params(index, meta.get("search_params", {}))
    src, dst, _ = similar_pairs(index, threshold, chunk=chunk, quiet=quiet)
    groups = groups_of(index.ntotal, src, dst)
    log.info("%d near-duplicate groups (%d rows, %d pairs above %.3f) among %d rows",
             len(groups), sum(map(len, groups)), len(src), threshold, index.ntotal)
    return {"threshold": float(threshold), "rows": int(index.ntotal), "pairs": int(len(src)),
            "groups": [{"rows": g, "paths": [items[r].get("path") for r in g],
                        "labels": [items[r].get("class_name", items[r].get("label"))
                                   for r in g]} for g in groups]}


def drop_duplicate_hits(index: faiss.Index, scores: np.ndarray, ids: np.ndarray, k: int,
                        threshold: float = DEDUP_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) (Q, k): each query's hits (Q, K ≥ k, best first) without any hit whose
    similarity to a better hit kept before it exceeds ``threshold``; the first k kept, padded
    with id -1."""
    out_s = np.full((len(ids), k), -np.inf, dtype=np.float32)
    out_i = np.full((len(ids), k), -1, dtype=np.int64)
    for q, (row_s, row_i) in enumerate(zip(scores, ids, strict=True)):
        valid = row_i >= 0
        vecs = stored_vectors(index, row_i[valid])
        sims = vecs @ vecs.T
        kept: list[int] = []
        for j in range(len(vecs)):
            if not kept or sims[j, kept].max() <= threshold:
                kept.append(j)
            if len(kept) == k:
                break
        out_s[q, :len(kept)] = row_s[valid][kept]
        out_i[q, :len(kept)] = row_i[valid][kept]
    return out_s, out_i


def search_distinct(loaded: tuple[faiss.Index, Any, dict[str, Any]], queries: np.ndarray,
                    k: int, threshold: float = DEDUP_THRESHOLD, overfetch: int = 4,
                    **search: Any) -> tuple[np.ndarray, np.ndarray, Any, dict[str, Any]]:
    """:func:`hebbret.index.search_loaded` without near-duplicate hits: ``overfetch`` × k
    hits searched, then :func:`drop_duplicate_hits` keeps the first k distinct ones."""
    _check_metric(loaded[2], search.get("name", "the index"))
    scores, ids, items, meta = search_loaded(loaded, queries, k * overfetch, **search)
    scores, ids = drop_duplicate_hits(loaded[0], scores, ids, min(k, loaded[0].ntotal), threshold)
    return scores, ids, items, meta
