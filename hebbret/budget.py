"""An index chosen for a budget: candidate FAISS factories tried on a sample of the collection,
each measured (recall@10 against exact search, query time, bytes per vector), and the smallest
that fits ``max_memory`` for the whole collection, reaches ``target_recall`` and answers within
``max_query_ms``.

The idea is autofaiss's (``max_index_memory_usage``, ``max_index_query_time_ms``); this short
module keeps the project's own faiss, index dirs and recall measure instead of autofaiss's
pipeline. The sample stands in for the collection: an IVF is measured with as many vectors
per list as the whole collection will have, and its nprobe is scaled to the same fraction of
the lists. A sample is sparser than the collection, so compressed codes look better on it
than they are (near-copies the codes cannot tell apart are rarely both in a sample): each
candidate's recall on the sample is therefore multiplied by its codes' recall where the
collection is as dense as it is — each query's 100 nearest rows of the *whole* collection,
re-ranked through the codes.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import faiss
import numpy as np

from .embed import load_embeddings
from .index import as_float32, build_index

log = logging.getLogger(__name__)

NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
POINTS_PER_LIST = 256  # an IVF gets about √n·4 lists, at least this many vectors each (sample)
NEAREST = 100  # each query's nearest rows of the whole collection, re-ranked through the codes
TRAIN_ROWS = 40 * 256  # a candidate's k-means (lists, PQ codebooks of 256) learns from these


def parse_size(text: str | int | float) -> int:
    """Bytes of '512M', '2G', '1.5GiB', '300000000' ..."""
    s = str(text).strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(s[-1:], 1)
    try:
        return int(float(s[:-1] if scale > 1 else s) * scale)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (e.g. 512M, 2G)") from None


def lists_for(n: int) -> int:
    """IVF lists for ``n`` vectors: a power of two near 4·√n, with ≥ POINTS_PER_LIST each."""
    if n < 4 * POINTS_PER_LIST:
        return 0
    return int(min(2 ** round(math.log2(4 * math.sqrt(n))), 2 ** int(math.log2(n / POINTS_PER_LIST))))


def candidates(n: int, d: int) -> list[str]:
    """Factory strings worth trying for ``n`` vectors of dimension ``d``, ``{nlist}`` left open."""
    out = ["Flat", "HNSW32"]
    if lists_for(n):
        out += ["IVF{nlist},Flat", "IVF{nlist},SQ8", "IVF{nlist},SQ4"]
        out += [f"IVF{{nlist}},PQ{m}" for m in (d // 4, d // 8, d // 16) if m >= 8 and d % m == 0]
    return out


def _measure(factory: str, db: np.ndarray, metric: int) -> tuple[faiss.Index, float, int]:
    """The index ``factory`` over ``db``, its bytes per vector and its fixed bytes (centroids,
    codebooks: the serialised size of the trained, empty index)."""
    index = faiss.index_factory(db.shape[1], factory, metric)
    if not index.is_trained:  # FAISS's own floor is 39 rows per centroid; PQ's k-means is slow
        index.train(db[:: max(1, len(db) // TRAIN_ROWS)])  # spread over the (sorted) rows
    empty = faiss.serialize_index(index).size
    index.add(db)
    return index, (faiss.serialize_index(index).size - empty) / len(db), empty


def _scores(index: faiss.Index, queries: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(recall@k against ``truth`` (Q, k), ms per query searching one at a time)."""
    from faiss.contrib.evaluation import knn_intersection_measure

    start = time.perf_counter()
    found = np.concatenate([index.search(q[None], truth.shape[1])[1] for q in queries])
    ms = 1000 * (time.perf_counter() - start) / len(queries)
    return float(knn_intersection_measure(truth, found)), ms


def _nearest_rows(emb: np.ndarray, own: np.ndarray, q: np.ndarray, normalize: bool, metric: int,
                  k: int = NEAREST) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of the whole collection ``emb`` (N, D) to each query (Q, D), the
    query's ``own`` row left out, by exact search read in blocks: ids (Q, k), vectors (Q, k, D)."""
    from faiss.contrib.exhaustive_search import knn_ground_truth

    blocks = (as_float32(emb[i: i + 65536], normalize) for i in range(0, len(emb), 65536))
    found = knn_ground_truth(q, blocks, k + 1, metric, ngpu=0)[1]
    keep = found != own[:, None]
    keep[keep.sum(1) > k, -1] = False  # the own row was not among them: drop the last instead
    ids = found[keep].reshape(len(q), k)
    flat = np.sort(np.unique(ids))
    vectors = as_float32(emb[flat], normalize)[np.searchsorted(flat, ids)]
    return ids, vectors


def _code_recall(index: faiss.Index, q: np.ndarray, ids: np.ndarray, vectors: np.ndarray,
                 metric: int) -> float:
    """recall@10 of the queries' nearest rows of the whole collection (``ids`` (Q, K), ``vectors``
    (Q, K, D), best first) ranked by their distances after ``index``'s encoding (its codes as
    ``sa_encode`` writes them, decoded): what the codes lose where the collection is as dense as
    it really is, which a sample thins out. 1.0 for indexes that keep the vectors (HNSW)."""
    from faiss.contrib.evaluation import knn_intersection_measure

    nq, k, d = vectors.shape
    try:
        decoded = index.sa_decode(index.sa_encode(vectors.reshape(-1, d))).reshape(nq, k, d)
    except RuntimeError:  # no standalone codec: the index stores the vectors themselves
        return 1.0
    scores = (np.einsum("qkd,qd->qk", decoded, q) if metric == faiss.METRIC_INNER_PRODUCT
              else -((decoded - q[:, None]) ** 2).sum(-1))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    return float(knn_intersection_measure(ids[:, :10], np.take_along_axis(ids, order, 1)))


def choose_index(emb: np.ndarray, max_memory: int | None = None, target_recall: float = 0.9,
                 max_query_ms: float | None = None, normalize: bool = True,
                 metric: int = faiss.METRIC_INNER_PRODUCT, sample: int = 20_000,
                 queries: int = 200, seed: int = 0) -> dict[str, Any]:
    """Measure every candidate on a seeded sample of ``emb`` (N, D) and pick one.

    Returns {"factory", "nprobe", "chosen": the winning measurement, "measured": every one
    ({factory, nprobe, recall_at_10, query_ms, bytes_per_vector, memory_bytes}),
    "sample", "queries", ...}. Raises ValueError naming the closest miss when none fits.
    """
    n, d = emb.shape
    rng = np.random.default_rng(seed)
    rows = rng.permutation(n)[: min(n, sample + queries)]
    own = np.sort(rows[:queries])
    q = as_float32(emb[own], normalize)
    db = as_float32(emb[np.sort(rows[queries:])], normalize)
    exact = faiss.IndexFlat(d, metric)
    exact.add(db)
    truth = exact.search(q, min(10, len(db)))[1]
    near = _nearest_rows(emb, own, q, normalize, metric) if n > len(rows) else None
    nlist_n, nlist_s = lists_for(n), lists_for(len(db))
    measured = []
    for pattern in candidates(len(db), d):
        index, per_vector, fixed = _measure(pattern.format(nlist=nlist_s), db, metric)
        ivf = faiss.try_extract_index_ivf(index)
        fixed = fixed * nlist_n // nlist_s if ivf is not None else fixed  # centroids grow
        codes = 1.0 if near is None else _code_recall(index, q, *near, metric)
        last = -1.0
        for nprobe in [p for p in NPROBES if p <= nlist_s] if ivf is not None else [None]:
            if ivf is not None:
                ivf.nprobe = nprobe
            sampled, ms = _scores(index, q, truth)
            recall = sampled * codes
            full = None if nprobe is None else max(1, round(nprobe * nlist_n / nlist_s))
            measured.append({"factory": pattern.format(nlist=nlist_n), "nprobe": full,
                             "recall_at_10": recall, "sample_recall_at_10": sampled,
                             "code_recall_at_10": codes, "query_ms": ms,
                             "bytes_per_vector": per_vector,
                             "memory_bytes": int(per_vector * n + fixed)})
            if recall >= target_recall or recall < last + 0.005:
                break  # a larger nprobe only costs time, or the codes limit the recall
            last = recall
    return _pick(measured, max_memory, target_recall, max_query_ms) | {
        "measured": measured, "sample": len(db), "queries": len(q),
        "target_recall": target_recall, "max_memory": max_memory, "max_query_ms": max_query_ms}


def _pick(measured: list[dict[str, Any]], max_memory: int | None, target_recall: float,
          max_query_ms: float | None) -> dict[str, Any]:
    fits = [m for m in measured if m["recall_at_10"] >= target_recall
            and (max_memory is None or m["memory_bytes"] <= max_memory)
            and (max_query_ms is None or m["query_ms"] <= max_query_ms)]
    if not fits:
        best = max(measured, key=lambda m: m["recall_at_10"] - (
            0 if max_memory is None or m["memory_bytes"] <= max_memory else 1))
        raise ValueError(f"no index reaches recall@10 {target_recall} within "
                         f"{max_memory or 'any'} bytes and {max_query_ms or 'any'} ms/query; "
                         f"the closest: {best['factory']} (nprobe {best['nprobe']}): recall "
                         f"{best['recall_at_10']:.3f}, {best['memory_bytes']} bytes, "
                         f"{best['query_ms']:.2f} ms")
    chosen = min(fits, key=lambda m: (m["memory_bytes"], m["query_ms"]))
    log.info("chose %s (nprobe %s): recall@10 %.3f, %.2f ms/query, %.0f MB", chosen["factory"],
             chosen["nprobe"], chosen["recall_at_10"], chosen["query_ms"],
             chosen["memory_bytes"] / 2**20)
    return {"factory": chosen["factory"], "nprobe": chosen["nprobe"], "chosen": chosen}


def build_for_budget(emb_dir: Any, out: Any, max_memory: int | None = None,
                     target_recall: float = 0.9, max_query_ms: float | None = None,
                     metric: str = "ip", **build: Any) -> Any:
    """:func:`choose_index` over an embeddings dir, then :func:`hebbret.index.build_index` of
    the choice, its measurements in the index's ``meta.json`` ("budget")."""
    emb, _, _ = load_embeddings(emb_dir)
    choice = choose_index(emb, max_memory, target_recall, max_query_ms, normalize=metric == "ip",
                          metric=faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2)
    return build_index(emb_dir, out, factory=choice["factory"], metric=metric,
                       nprobe=choice["nprobe"], extra_meta={"budget": choice}, **build)
