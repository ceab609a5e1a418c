"""Weighted kNN (InstDisc / DINO's vote Σ exp(cos/T)) over exact cosine blocks or a FAISS index.

Scores are computed in blocks of queries × database so extra memory stays under ``memory_mb``
whatever N is.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ..config import DEFAULT_KS, KNN_TEMPERATURE
from .features import check_ks, check_labeled, l2_normalized, top1_top5_hits


def weighted_vote(scores: np.ndarray, labels: np.ndarray, temperature: float = KNN_TEMPERATURE
                  ) -> dict[int, float]:
    """The weighted kNN vote of :func:`knn_classify` for one query: {label: share of the votes},
    each neighbour voting exp(score / T) for its label (unlabeled neighbours, label < 0, abstain),
    highest first."""
    keep = labels >= 0
    if not keep.any():
        return {}
    s = np.asarray(scores, np.float64)[keep]
    w = np.exp((s - s.max()) / temperature)
    votes: dict[int, float] = {}
    for label, weight in zip(labels[keep].tolist(), w.tolist(), strict=True):
        votes[label] = votes.get(label, 0.0) + weight
    total = sum(votes.values())
    return dict(sorted(((k, v / total) for k, v in votes.items()), key=lambda kv: -kv[1]))


def cosine_blocks(queries: np.ndarray, database: np.ndarray, memory_mb: int = 1024
                  ) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield (query rows, cosine similarities float32 (q, N)) for blocks of queries.

    The database is read and normalised in chunks; each block's score matrix plus one database
    chunk stays within about ``memory_mb``.
    """
    n, d = database.shape
    if queries.shape[1] != d:
        raise ValueError(f"query dimension {queries.shape[1]} != database dimension {d}")
    budget = memory_mb * 2**20
    db_chunk = max(1, min(n, budget // 4 // (4 * d)))
    q_block = max(1, min(len(queries), budget // 2 // (4 * (n + d))))
    db_cache = l2_normalized(database) if n * d * 4 <= budget // 4 else None
    for q0 in range(0, len(queries), q_block):
        q = l2_normalized(queries[q0: q0 + q_block])
        if db_cache is not None:
            yield slice(q0, q0 + len(q)), q @ db_cache.T
            continue
        scores = torch.empty(len(q), n)
        for d0 in range(0, n, db_chunk):
            scores[:, d0: d0 + db_chunk] = q @ l2_normalized(database[d0: d0 + db_chunk]).T
        yield slice(q0, q0 + len(q)), scores


def query_rows(query_db_rows: np.ndarray | None, n_queries: int) -> torch.Tensor:
    if query_db_rows is None:
        return torch.full((n_queries,), -1, dtype=torch.long)
    rows = torch.as_tensor(np.asarray(query_db_rows), dtype=torch.long)
    if rows.shape != (n_queries,):
        raise ValueError(f"query_db_rows must have one entry per query ({n_queries}), "
                         f"got shape {tuple(rows.shape)}")
    return rows


def mask_own(scores: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """Set each query's own database row (own >= 0) to -inf: (q, N) -> (q, N)."""
    has_own = own >= 0
    if bool(has_own.any()):
        scores = scores.clone()
        scores[has_own.nonzero().squeeze(1), own[has_own]] = -math.inf
    return scores


def knn_classify(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray,
                 test_labels: np.ndarray, ks: Sequence[int] = DEFAULT_KS,
                 temperature: float = KNN_TEMPERATURE, query_db_rows: np.ndarray | None = None,
                 memory_mb: int = 1024, train_weights: np.ndarray | None = None,
                 index: Any = None) -> dict[str, Any]:
    """Weighted kNN: each of the k nearest train items votes exp(cos / T) for its class.

    Args:
        train_feats: (N, D); train_labels: int (N,); test_feats: (Q, D); test_labels: int (Q,).
        query_db_rows: int (Q,), the train row of each test item (-1 if none); a test item never
            votes for itself.
        train_weights: float (N,), scales each train item's vote (e.g. the certainty of a
            propagated label); None: 1.
        index: a FAISS inner-product index over the L2-normalised ``train_feats`` (in order)
            that finds the neighbours instead of exact cosine (e.g. through a PCA); None: exact.
    Returns:
        {"k": {k: {"top1": %, "top5": %}}, "temperature", "num_classes", ...}; k is capped at N.
    """
    check_labeled(train_feats, train_labels, "train")
    check_labeled(test_feats, test_labels, "test")
    ks = check_ks(ks)
    own_rows = query_rows(query_db_rows, len(test_feats))
    n = len(train_feats) - int(bool((own_rows >= 0).any()))
    ks_used = sorted({min(k, n) for k in ks})
    train_labels = torch.as_tensor(np.asarray(train_labels), dtype=torch.long)
    test_labels = torch.as_tensor(np.asarray(test_labels), dtype=torch.long)
    num_classes = int(train_labels.max()) + 1
    item_weights = None if train_weights is None else torch.as_tensor(
        np.asarray(train_weights), dtype=torch.float32)
    kmax = ks_used[-1]
    hits = {k: [0, 0] for k in ks_used}
    for rows, sims, idx in nearest_rows(test_feats, train_feats, kmax, own_rows, memory_mb,
                                        index):
        neighbour_labels = train_labels[idx]
        weights = ((sims - sims[:, :1]) / temperature).exp()  # shifted by the row max: same vote
        if item_weights is not None:
            weights = weights * item_weights[idx]
        truth = test_labels[rows].unsqueeze(1)
        for k in ks_used:
            votes = torch.zeros(len(sims), num_classes)
            votes.scatter_add_(1, neighbour_labels[:, :k], weights[:, :k])
            top1, top5 = top1_top5_hits(votes, truth)
            hits[k][0] += top1
            hits[k][1] += top5
    q = len(test_feats)
    return {
        "k": {k: {"top1": 100.0 * h[0] / q, "top5": 100.0 * h[1] / q} for k, h in hits.items()},
        "k_requested": ks, "temperature": temperature, "num_classes": num_classes,
        "num_train": len(train_feats), "num_test": q, "similarity": "cosine",
        "vote": "sum exp(s/T)", "self_match_excluded": bool((own_rows >= 0).any()),
    }


def nearest_rows(test_feats: np.ndarray, train_feats: np.ndarray, k: int,
                 own_rows: torch.Tensor | None = None, memory_mb: int = 1024, index: Any = None
                 ) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """(test rows, cosine (B, k), train rows (B, k)) of the k most similar train items, most
    similar first, never a test item's own row (``own_rows``, -1: none): exact, or searched in
    a FAISS inner-product ``index`` over the L2-normalised train rows."""
    own_rows = query_rows(None, len(test_feats)) if own_rows is None else own_rows
    if index is None:
        for rows, scores in cosine_blocks(test_feats, train_feats, memory_mb):
            yield rows, *mask_own(scores, own_rows[rows]).topk(k, dim=1)
        return
    if index.ntotal != len(train_feats):
        raise ValueError(f"the index holds {index.ntotal} vectors but there are "
                         f"{len(train_feats)} train items")
    chunk = 4096
    for i in range(0, len(test_feats), chunk):
        rows = slice(i, min(i + chunk, len(test_feats)))
        s, j = index.search(l2_normalized(test_feats[rows]).numpy(), k + 1)
        s, j = torch.from_numpy(s), torch.from_numpy(j)
        own = j == torch.as_tensor(own_rows[rows]).unsqueeze(1)
        s = s.masked_fill(own | (j < 0), -torch.inf)
        s, order = s.sort(dim=1, descending=True)
        yield rows, s[:, :k], j.gather(1, order)[:, :k].clamp_min(0)
