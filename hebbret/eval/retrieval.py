"""Retrieval quality of a cosine ranking: mAP, mAP@k, P@k, Recall@k (relevant = same label)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..config import RETRIEVAL_KS
from .features import check_ks, check_labeled
from .knn import cosine_blocks, mask_own, query_rows


def retrieval_metrics(db_feats: np.ndarray, db_labels: np.ndarray, query_feats: np.ndarray,
                      query_labels: np.ndarray, ks: Sequence[int] = RETRIEVAL_KS,
                      query_db_rows: np.ndarray | None = None, memory_mb: int = 1024,
                      sort_block: int = 256) -> dict[str, Any]:
    """Retrieval quality of ranking the database by cosine similarity, relevant = same label.

    Args:
        db_feats (N, D), db_labels (N,), query_feats (Q, D), query_labels (Q,).
        query_db_rows: int (Q,), the database row of each query (-1 if none), which is removed
            from that query's ranking (a query never counts as its own match).
    Returns:
        mAP over the whole database (AP normaliser R, the number of relevant items), mAP@k
        (normaliser min(R, k)), P@k (normaliser k) and Recall@k (share of queries with at least
        one relevant item in the top k). Queries with R = 0 are left out and counted.
    """
    check_labeled(db_feats, db_labels, "database")
    check_labeled(query_feats, query_labels, "queries")
    ks = check_ks(ks)
    n = len(db_feats)
    db_labels = torch.as_tensor(np.asarray(db_labels), dtype=torch.long)
    query_labels = torch.as_tensor(np.asarray(query_labels), dtype=torch.long)
    own_rows = query_rows(query_db_rows, len(query_feats))
    class_counts = torch.bincount(db_labels, minlength=int(query_labels.max()) + 1)
    sums = {"ap": 0.0, **{f"ap@{k}": 0.0 for k in ks}, **{f"p@{k}": 0.0 for k in ks},
            **{f"r@{k}": 0.0 for k in ks}}
    counted = 0
    ranks = torch.arange(1, n + 1, dtype=torch.float32)
    # argsort indices, gathered labels, rel, hits and prec: about 40 bytes per (query, item)
    sort_block = max(1, min(sort_block, memory_mb * 2**20 // (40 * n)))
    for rows, scores in cosine_blocks(query_feats, db_feats, memory_mb):
        for s0 in range(0, len(scores), sort_block):
            block = scores[s0: s0 + sort_block]
            qrows = torch.arange(rows.start + s0, rows.start + s0 + len(block))
            labels = query_labels[qrows]
            total_rel = class_counts[labels].float()
            own = own_rows[qrows]  # the query's own row sorts last and is never relevant
            block = mask_own(block, own)
            total_rel -= ((own >= 0) & (db_labels[own.clamp_min(0)] == labels)).float()
            order = block.argsort(dim=1, descending=True)
            rel = ((db_labels[order] == labels.unsqueeze(1)) & (order != own.unsqueeze(1))).float()
            keep = total_rel > 0
            rel, total_rel = rel[keep], total_rel[keep]
            counted += int(keep.sum())
            _add_ranked(sums, rel, total_rel, ranks, ks)
    if counted == 0:
        raise ValueError("no query has a relevant item (same label) in the database")
    pct = {key: 100.0 * v / counted for key, v in sums.items()}
    return {
        "mAP": pct["ap"],
        "mAP@k": {k: pct[f"ap@{k}"] for k in ks},
        "P@k": {k: pct[f"p@{k}"] for k in ks},
        "Recall@k": {k: pct[f"r@{k}"] for k in ks},
        "num_database": n, "num_queries": len(query_feats), "queries_counted": counted,
        "queries_without_relevant": len(query_feats) - counted,
        "self_match_excluded": bool((own_rows >= 0).any()),
        "normalizers": {"mAP": "R = relevant items in the database (whole ranking)",
                        "mAP@k": "min(R, k)", "P@k": "k",
                        "Recall@k": "queries with >= 1 relevant item in the top k / queries"},
        "similarity": "cosine", "relevance": "same label",
    }


def _add_ranked(sums: dict[str, float], rel: torch.Tensor, total_rel: torch.Tensor,
                ranks: torch.Tensor, ks: list[int]) -> None:
    """Add to ``sums`` the AP, AP@k, P@k and hit@k of queries whose ranked relevance is ``rel``
    (Q, N) (1 = same label), with ``total_rel`` (Q,) relevant items each; ranks = 1..N."""
    hits = rel.cumsum(dim=1)
    prec = hits / ranks[: rel.shape[1]]
    sums["ap"] += float(((prec * rel).sum(1) / total_rel).sum())
    for k in ks:
        kk = min(k, rel.shape[1])
        sums[f"ap@{k}"] += float(((prec[:, :kk] * rel[:, :kk]).sum(1)
                                  / total_rel.clamp(max=k)).sum())
        sums[f"p@{k}"] += float((hits[:, kk - 1] / k).sum())
        sums[f"r@{k}"] += float((hits[:, kk - 1] > 0).float().sum())
