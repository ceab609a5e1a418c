"""Evaluation: weighted kNN, linear probe, retrieval metrics on embeddings (docs/design.md §7),
and a fine-tuned classifier's accuracy on a labeled dataset.

Features are L2-normalised and compared by inner product (cosine). Scores are computed in
blocks of queries × database so extra memory stays under ``memory_mb`` whatever N is.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._io import write_json
from .data import SkippedFiles, make_loader, open_dataset
from .embed import load_embeddings
from .runs import load_run
from .runtime import pick_device

log = logging.getLogger(__name__)

DEFAULT_KS = (10, 20, 100, 200)
KNN_TEMPERATURE = 0.07  # votes exp(cos / T), InstDisc / DINO's weighted kNN
LINEAR_PROTOCOLS = ("logreg", "softhebb")  # `eval linear --protocol`
RETRIEVAL_KS = (1, 10, 100)


def _check(feats: np.ndarray, labels: np.ndarray, name: str) -> None:
    if feats.ndim != 2:
        raise ValueError(f"{name} features must be 2-D (N, D), got shape {feats.shape}")
    if len(labels) != len(feats):
        raise ValueError(f"{name}: {len(feats)} feature rows but {len(labels)} labels")
    if len(feats) == 0:
        raise ValueError(f"{name} is empty")
    if np.asarray(labels).min() < 0:
        raise ValueError(f"{name} has unlabeled rows (label -1); evaluation needs labels")


def _normalized(x: np.ndarray) -> torch.Tensor:
    return F.normalize(torch.from_numpy(np.array(x, dtype=np.float32)), dim=1)


def _check_ks(ks: Sequence[int]) -> list[int]:
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] <= 0:
        raise ValueError(f"k must be positive, got {list(ks)}")
    return ks


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


def top1_top5_hits(scores: torch.Tensor, truth: torch.Tensor) -> tuple[int, int]:
    """How many rows of ``scores`` (Q, C) rank class ``truth`` (Q,) first, and in the top 5."""
    ranked = scores.topk(min(5, scores.shape[1]), dim=1).indices
    hit = ranked == truth.view(-1, 1)
    return int(hit[:, :1].any(1).sum()), int(hit.any(1).sum())


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
    db_cache = _normalized(database) if n * d * 4 <= budget // 4 else None
    for q0 in range(0, len(queries), q_block):
        q = _normalized(queries[q0: q0 + q_block])
        if db_cache is not None:
            yield slice(q0, q0 + len(q)), q @ db_cache.T
            continue
        scores = torch.empty(len(q), n)
        for d0 in range(0, n, db_chunk):
            scores[:, d0: d0 + db_chunk] = q @ _normalized(database[d0: d0 + db_chunk]).T
        yield slice(q0, q0 + len(q)), scores


def _query_rows(query_db_rows: np.ndarray | None, n_queries: int) -> torch.Tensor:
    if query_db_rows is None:
        return torch.full((n_queries,), -1, dtype=torch.long)
    rows = torch.as_tensor(np.asarray(query_db_rows), dtype=torch.long)
    if rows.shape != (n_queries,):
        raise ValueError(f"query_db_rows must have one entry per query ({n_queries}), "
                         f"got shape {tuple(rows.shape)}")
    return rows


def _mask_own(scores: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
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
    _check(train_feats, train_labels, "train")
    _check(test_feats, test_labels, "test")
    ks = _check_ks(ks)
    own_rows = _query_rows(query_db_rows, len(test_feats))
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
    own_rows = _query_rows(None, len(test_feats)) if own_rows is None else own_rows
    if index is None:
        for rows, scores in cosine_blocks(test_feats, train_feats, memory_mb):
            yield rows, *_mask_own(scores, own_rows[rows]).topk(k, dim=1)
        return
    if index.ntotal != len(train_feats):
        raise ValueError(f"the index holds {index.ntotal} vectors but there are "
                         f"{len(train_feats)} train items")
    chunk = 4096
    for i in range(0, len(test_feats), chunk):
        rows = slice(i, min(i + chunk, len(test_feats)))
        s, j = index.search(_normalized(test_feats[rows]).numpy(), k + 1)
        s, j = torch.from_numpy(s), torch.from_numpy(j)
        own = j == torch.as_tensor(own_rows[rows]).unsqueeze(1)
        s = s.masked_fill(own | (j < 0), -torch.inf)
        s, order = s.sort(dim=1, descending=True)
        yield rows, s[:, :k], j.gather(1, order)[:, :k].clamp_min(0)


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
    _check(db_feats, db_labels, "database")
    _check(query_feats, query_labels, "queries")
    ks = _check_ks(ks)
    n = len(db_feats)
    db_labels = torch.as_tensor(np.asarray(db_labels), dtype=torch.long)
    query_labels = torch.as_tensor(np.asarray(query_labels), dtype=torch.long)
    own_rows = _query_rows(query_db_rows, len(query_feats))
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
            block = _mask_own(block, own)
            total_rel -= ((own >= 0) & (db_labels[own.clamp_min(0)] == labels)).float()
            order = block.argsort(dim=1, descending=True)
            rel = ((db_labels[order] == labels.unsqueeze(1)) & (order != own.unsqueeze(1))).float()
            keep = total_rel > 0
            rel, total_rel = rel[keep], total_rel[keep]
            counted += int(keep.sum())
            hits = rel.cumsum(dim=1)
            prec = hits / ranks[: rel.shape[1]]
            sums["ap"] += float(((prec * rel).sum(1) / total_rel).sum())
            for k in ks:
                kk = min(k, rel.shape[1])
                sums[f"ap@{k}"] += float(((prec[:, :kk] * rel[:, :kk]).sum(1)
                                          / total_rel.clamp(max=k)).sum())
                sums[f"p@{k}"] += float((hits[:, kk - 1] / k).sum())
                sums[f"r@{k}"] += float((hits[:, kk - 1] > 0).float().sum())
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


def linear_probe(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray,
                 test_labels: np.ndarray, weight_decays: Sequence[float] = (0.0, 1e-5, 1e-4, 1e-3),
                 val_fraction: float = 0.1, epochs: int = 20, batch_size: int = 512,
                 lr: float = 1e-3, seed: int = 0, memory_mb: int = 2048) -> dict[str, Any]:
    """Multinomial logistic regression on frozen, L2-normalised, standardised features.

    The L2 penalty is chosen on a class-stratified validation split carved from train (never on
    test); the chosen value is then refit on all of train. Mini-batch Adam, so the features can
    be a memory-mapped (N, D) array larger than RAM: the preprocessed features are held in memory
    when they fit in ``memory_mb`` (float32, else float16), otherwise streamed every epoch.

    Returns:
        {"top1", "top5", "weight_decay", "val_top1": {wd: %}, ...}
    """
    _check(train_feats, train_labels, "train")
    _check(test_feats, test_labels, "test")
    if train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"train dimension {train_feats.shape[1]} != test dimension "
                         f"{test_feats.shape[1]}")
    y = np.asarray(train_labels, dtype=np.int64)
    if len(np.unique(y)) < 2:
        raise ValueError(f"a linear probe needs at least 2 classes in the training embeddings; "
                         f"they hold only class {int(y[0])}")
    num_classes = int(y.max()) + 1
    rng = np.random.default_rng(seed)
    val = np.concatenate([  # classes with one item stay wholly in the fit split
        rng.permutation(rows)[: min(max(1, round(val_fraction * len(rows))), len(rows) - 1)]
        for rows in (np.flatnonzero(y == c) for c in np.unique(y))])
    fit = np.setdiff1d(np.arange(len(y)), val)
    if len(val) == 0:
        raise ValueError("the linear probe needs at least 2 train items in some class to carve "
                         "out a validation split")
    mean, std = _feature_stats(train_feats, fit)
    val_scores = {}
    for wd in weight_decays:
        model = _fit_logreg(train_feats, y, fit, mean, std, num_classes, wd, epochs, batch_size,
                            lr, seed, memory_mb)
        val_scores[wd] = _accuracy(model, train_feats[np.sort(val)], y[np.sort(val)], mean, std)[0]
        log.info("linear probe: weight decay %g -> val top-1 %.2f%%", wd, val_scores[wd])
    best = max(val_scores, key=lambda wd: (val_scores[wd], -wd))
    everything = np.arange(len(y))
    mean, std = _feature_stats(train_feats, everything)
    model = _fit_logreg(train_feats, y, everything, mean, std, num_classes, best, epochs,
                        batch_size, lr, seed, memory_mb)
    top1, top5 = _accuracy(model, test_feats, np.asarray(test_labels), mean, std)
    return {"top1": top1, "top5": top5, "weight_decay": best, "val_top1": val_scores,
            "val_size": len(val), "epochs": epochs, "optimizer": f"Adam lr {lr}",
            "features": "L2-normalised, standardised with train statistics"}


SOFTHEBB_MILESTONES = (10, 17, 25, 30, 35, 40, 45)


def softhebb_readout(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray,
                     test_labels: np.ndarray, epochs: int = 50, batch_size: int = 64,
                     lr: float = 1e-3, dropout: float = 0.5,
                     milestones: Sequence[int] = SOFTHEBB_MILESTONES,
                     init_scale: float | None = 0.1105, seed: int = 0) -> dict[str, Any]:
    """SoftHebb's linear readout (Journé et al. 2023) on frozen features, as they come.

    Dropout ``dropout`` -> linear layer (weights ``init_scale``·U(0, 1) and bias 0, as in
    SoftHebb's demo; ``init_scale=None``: weights and bias U(±1/√D), nn.Linear's default, as in
    SoftHebb's full code),
    Adam ``lr``, cross-entropy, ``epochs`` epochs of batches of ``batch_size``, learning rate
    halved at each of ``milestones``; no feature normalisation, no validation split, the final
    model is tested once. Features: (N, D) float32 or float16 (held in memory in their dtype).

    Returns:
        {"top1", "top5", "train_top1_last_epoch", "train_loss_last_epoch", protocol fields}
    """
    _check(train_feats, train_labels, "train")
    _check(test_feats, test_labels, "test")
    if train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"train dimension {train_feats.shape[1]} != test dimension "
                         f"{test_feats.shape[1]}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    held = torch.from_numpy(np.array(train_feats))
    labels = torch.as_tensor(np.asarray(train_labels, dtype=np.int64))
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(held.shape[1], int(labels.max()) + 1)
    with torch.no_grad():
        if init_scale is None:
            bound = held.shape[1] ** -0.5
            head.weight.uniform_(-bound, bound, generator=g)
            head.bias.uniform_(-bound, bound, generator=g)
        else:
            head.weight.copy_(init_scale * torch.rand(head.weight.shape, generator=g))
            head.bias.zero_()
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(milestones), gamma=0.5)
    correct = seen = 0
    total_loss = 0.0
    for _ in range(epochs):
        perm = torch.randperm(len(held), generator=g)
        correct = seen = 0
        total_loss = 0.0
        for i in range(0, len(perm), batch_size):
            take = perm[i: i + batch_size]
            xb = held[take].float()
            if dropout:  # a torch.rand mask: F.dropout's bernoulli_ is ~5x slower on CPU
                keep = torch.rand(xb.shape, generator=g) >= dropout
                xb = xb.mul_(keep).mul_(1.0 / (1.0 - dropout))
            logits = head(xb)
            loss = F.cross_entropy(logits, labels[take])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total_loss += loss.item() * len(take)
            correct += int((logits.argmax(1) == labels[take]).sum())
            seen += len(take)
        sched.step()
    top1 = top5 = 0
    truth = np.asarray(test_labels)
    with torch.no_grad():
        for i in range(0, len(test_feats), 4096):
            logits = head(torch.from_numpy(np.array(test_feats[i: i + 4096], dtype=np.float32)))
            h1, h5 = top1_top5_hits(logits, torch.from_numpy(truth[i: i + 4096]))
            top1, top5 = top1 + h1, top5 + h5
    return {"top1": 100.0 * top1 / len(test_feats), "top5": 100.0 * top5 / len(test_feats),
            "train_top1_last_epoch": 100.0 * correct / max(seen, 1),
            "train_loss_last_epoch": total_loss / max(seen, 1), "epochs": epochs,
            "batch_size": batch_size, "optimizer": f"Adam lr {lr}", "dropout": dropout,
            "lr_halved_at": list(milestones), "features": "as extracted (no normalisation)",
            "init": ("U(±1/√D), nn.Linear's default" if init_scale is None
                     else f"{init_scale}·U(0, 1), bias 0")}


def _feature_stats(x: np.ndarray, rows: np.ndarray, chunk: int = 4096
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.zeros(x.shape[1], dtype=torch.float64)
    s2 = torch.zeros_like(s)
    rows = np.sort(rows)
    for i in range(0, len(rows), chunk):
        b = _normalized(x[rows[i: i + chunk]]).double()
        s += b.sum(0)
        s2 += (b * b).sum(0)
    mean = s / len(rows)
    std = (s2 / len(rows) - mean**2).clamp_min(0).sqrt()
    return mean.float(), std.float().clamp_min(1e-6)


def _standardized(x: np.ndarray, rows: np.ndarray, mean: torch.Tensor, std: torch.Tensor,
                  budget_mb: int, chunk: int = 4096) -> torch.Tensor | None:
    """The L2-normalised, standardised rows of ``x`` held in memory (float32, or float16 when
    that is what fits in ``budget_mb``), or None when even float16 does not fit."""
    for dtype, size in ((torch.float32, 4), (torch.float16, 2)):
        if len(rows) * x.shape[1] * size <= budget_mb * 2**20:
            out = torch.empty(len(rows), x.shape[1], dtype=dtype)
            for i in range(0, len(rows), chunk):
                out[i: i + chunk] = (_normalized(x[rows[i: i + chunk]]) - mean) / std
            return out
    return None


def _fit_logreg(x: np.ndarray, y: np.ndarray, rows: np.ndarray, mean: torch.Tensor,
                std: torch.Tensor, num_classes: int, weight_decay: float, epochs: int,
                batch_size: int, lr: float, seed: int, budget_mb: int = 2048) -> torch.nn.Linear:
    rows = np.sort(rows)
    held = _standardized(x, rows, mean, std, budget_mb)  # one pass over x instead of one per epoch
    labels = torch.from_numpy(y[rows])
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(x.shape[1], num_classes)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for _ in range(epochs):
        perm = torch.randperm(len(rows), generator=g)
        for i in range(0, len(perm), batch_size):
            take = perm[i: i + batch_size]
            if held is not None:
                xb = held[take].float()
            else:
                idx = np.sort(rows[take.numpy()])
                take = torch.from_numpy(np.searchsorted(rows, idx))
                xb = (_normalized(x[idx]) - mean) / std
            loss = F.cross_entropy(model(xb), labels[take])
            loss = loss + weight_decay * model.weight.pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return model


@torch.no_grad()
def _accuracy(model: torch.nn.Linear, x: np.ndarray, y: np.ndarray, mean: torch.Tensor,
              std: torch.Tensor, chunk: int = 4096) -> tuple[float, float]:
    top1 = top5 = 0
    for i in range(0, len(x), chunk):
        logits = model((_normalized(x[i: i + chunk]) - mean) / std)
        h1, h5 = top1_top5_hits(logits, torch.from_numpy(np.asarray(y[i: i + chunk])))
        top1, top5 = top1 + h1, top5 + h5
    return 100.0 * top1 / len(x), 100.0 * top5 / len(x)


def _labels(items: list[dict]) -> np.ndarray:
    return np.array([it["label"] for it in items], dtype=np.int64)


def aligned_labels(items: list[dict], classes: list[str] | None, reference: list[str] | None,
                   name: str) -> np.ndarray:
    """Labels of ``items`` renumbered into ``reference``'s class order (two folders number
    their classes independently, by sorted name). Raises if a class is unknown to it."""
    labels = _labels(items)
    if not classes or not reference or list(classes) == list(reference):
        return labels
    index = {c: i for i, c in enumerate(reference)}
    unknown = sorted(set(classes) - set(index))
    if unknown:
        raise ValueError(f"{name} has classes {unknown} that the train/database set does not have")
    remap = np.array([index[c] for c in classes], dtype=np.int64)
    return np.where(labels >= 0, remap[labels.clip(min=0)], labels)


def load_labeled_pair(train_emb: str | os.PathLike, test_emb: str | os.PathLike
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) of two embeddings dirs, the test labels in the train
    dir's class order (:func:`aligned_labels`); the arrays are memory-mapped."""
    x_train, items_train, meta_train = load_embeddings(train_emb)
    x_test, items_test, meta_test = load_embeddings(test_emb)
    y_test = aligned_labels(items_test, meta_test.get("classes"), meta_train.get("classes"),
                            str(test_emb))
    return x_train, _labels(items_train), x_test, y_test


def evaluate(kind: str, train_emb: str, test_emb: str, out: str | None = None,
             **options: Any) -> dict[str, Any]:
    """Load two embeddings dirs, run one evaluation, optionally write ``out`` (JSON).

    Args:
        kind: "knn" | "linear" | "softhebb" (SoftHebb's readout) | "retrieval" (for retrieval,
            train_emb is the database and test_emb the queries; queries that are database
            rows -- same data root and path -- are excluded from their own results).
        options: passed to :func:`knn_classify`, :func:`linear_probe`, :func:`softhebb_readout`
            or :func:`retrieval_metrics`.
    """
    x_train, items_train, meta_train = load_embeddings(train_emb)
    x_test, items_test, meta_test = load_embeddings(test_emb)
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"{train_emb} has {x_train.shape[1]}-d embeddings but {test_emb} has "
                         f"{x_test.shape[1]}-d; embed both with the same model and layer")
    if meta_train.get("model_sha256") != meta_test.get("model_sha256"):
        log.warning("%s and %s come from different models", train_emb, test_emb)
    y_train = _labels(items_train)
    y_test = aligned_labels(items_test, meta_test.get("classes"), meta_train.get("classes"),
                            str(test_emb))
    rows = None  # test items that are also train / database rows: same data root and path
    if meta_train.get("data_root") == meta_test.get("data_root"):
        where = {it["path"]: i for i, it in enumerate(items_train)}
        rows = np.array([where.get(it["path"], -1) for it in items_test])
        rows = rows if (rows >= 0).any() else None
    if kind == "knn":
        result = knn_classify(x_train, y_train, x_test, y_test, query_db_rows=rows, **options)
    elif kind == "linear":
        result = linear_probe(x_train, y_train, x_test, y_test, **options)
    elif kind == "softhebb":
        result = softhebb_readout(x_train, y_train, x_test, y_test, **options)
    elif kind == "retrieval":
        result = retrieval_metrics(x_train, y_train, x_test, y_test, query_db_rows=rows, **options)
    else:
        raise ValueError(f"unknown evaluation {kind!r}; choose knn, linear, softhebb or retrieval")
    result = {"evaluation": kind, "train" if kind != "retrieval" else "database": str(train_emb),
              "test" if kind != "retrieval" else "queries": str(test_emb),
              "model_sha256": meta_train.get("model_sha256"), "layer": meta_train.get("layer"),
              "pool": meta_train.get("pool"), **result}
    if out:
        write_json(out, result)
    return result


@torch.no_grad()
def evaluate_classifier(run: str | os.PathLike, data: str, split: str = "test",
                        data_root: str | None = None, batch_size: int = 256,
                        device: str = "auto") -> dict[str, Any]:
    """Top-1 / top-5 accuracy (%) of a fine-tuned run's classifier on a labeled dataset."""
    model, card = load_run(run)
    spec = card.input
    dataset = open_dataset(data, split, spec.in_chans, spec.img_size, data_root,
                           mean=spec.mean, std=spec.std)
    trained_on = card.trained_classes
    remap = torch.as_tensor(aligned_labels([{"label": i} for i in range(len(dataset.classes))],
                                           dataset.classes, trained_on, str(data)))
    dev = pick_device(device)
    model.to(dev).eval()
    skipped = SkippedFiles(dataset)
    top1 = top5 = n = 0
    for batch in make_loader(dataset, batch_size, device=dev):
        skipped.add(batch.skipped)
        if not len(batch.images):
            continue
        logits = model(batch.images.to(dev))
        truth = remap[batch.labels].to(dev)  # in the classifier's class order
        h1, h5 = top1_top5_hits(logits, truth)
        top1, top5, n = top1 + h1, top5 + h5, n + len(truth)
    if n == 0:
        raise ValueError(f"none of the files under {dataset.root} could be decoded")
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "count": n,
            "skipped_files": skipped.count}
