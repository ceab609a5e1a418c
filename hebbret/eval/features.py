"""Rows of frozen features: checks at the boundary, L2-normalisation, standardisation with
a collection's statistics, top-k hits, per-seed summaries."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def check_labeled(feats: np.ndarray, labels: np.ndarray, name: str) -> None:
    if feats.ndim != 2:
        raise ValueError(f"{name} features must be 2-D (N, D), got shape {feats.shape}")
    if len(labels) != len(feats):
        raise ValueError(f"{name}: {len(feats)} feature rows but {len(labels)} labels")
    if len(feats) == 0:
        raise ValueError(f"{name} is empty")
    if np.asarray(labels).min() < 0:
        raise ValueError(f"{name} has unlabeled rows (label -1); evaluation needs labels")


def l2_normalized(x: np.ndarray) -> torch.Tensor:
    return F.normalize(torch.from_numpy(np.array(x, dtype=np.float32)), dim=1)


def check_ks(ks: Sequence[int]) -> list[int]:
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] <= 0:
        raise ValueError(f"k must be positive, got {list(ks)}")
    return ks


@torch.no_grad()
def accuracy(logits_of: Callable[[np.ndarray], torch.Tensor], x: np.ndarray, y: np.ndarray,
             chunk: int = 4096) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (%) of a classifier over features x (N, D) with labels y (N,),
    ``logits_of`` mapping a chunk of rows of x to logits (n, C)."""
    top1 = top5 = 0
    for i in range(0, len(x), chunk):
        h1, h5 = top1_top5_hits(logits_of(x[i: i + chunk]),
                                torch.from_numpy(np.asarray(y[i: i + chunk])))
        top1, top5 = top1 + h1, top5 + h5
    return 100.0 * top1 / len(x), 100.0 * top5 / len(x)


def top1_top5_hits(scores: torch.Tensor, truth: torch.Tensor) -> tuple[int, int]:
    """How many rows of ``scores`` (Q, C) rank class ``truth`` (Q,) first, and in the top 5."""
    ranked = scores.topk(min(5, scores.shape[1]), dim=1).indices
    hit = ranked == truth.view(-1, 1)
    return int(hit[:, :1].any(1).sum()), int(hit.any(1).sum())


def feature_stats(x: np.ndarray, rows: np.ndarray, chunk: int = 4096
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.zeros(x.shape[1], dtype=torch.float64)
    s2 = torch.zeros_like(s)
    rows = np.sort(rows)
    for i in range(0, len(rows), chunk):
        b = l2_normalized(x[rows[i: i + chunk]]).double()
        s += b.sum(0)
        s2 += (b * b).sum(0)
    mean = s / len(rows)
    std = (s2 / len(rows) - mean**2).clamp_min(0).sqrt()
    return mean.float(), std.float().clamp_min(1e-6)


def collection_stats(x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (D,) of the L2-normalised rows of the whole collection (no labels used)."""
    return feature_stats(x, np.arange(len(x)))


def standardized(x: np.ndarray, stats: tuple[torch.Tensor, torch.Tensor], chunk: int = 4096
                 ) -> np.ndarray:
    """float32 (N, D): the L2-normalised rows of ``x`` standardised with the collection's
    ``stats`` (:func:`collection_stats`), the representation knn and propagate compare."""
    out = np.empty(x.shape, np.float32)
    for i in range(0, len(x), chunk):
        out[i: i + chunk] = prepare(np.asarray(x[i: i + chunk]), "l2+standardize", stats).numpy()
    return out


def prepare(x: np.ndarray, how: str, stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    z = l2_normalized(x)
    if how == "l2+standardize":
        z = (z - stats[0]) / stats[1]
    return z


def summarize(values: list[float]) -> dict[str, Any]:
    """mean, sample std (0 for one value) and n of per-seed accuracies."""
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
            "n": len(arr), "values": [float(v) for v in arr]}


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run tiny tensor ops on one thread: thread hand-offs cost more than the work (30× on a
    busy 2-core machine for an L × L logistic regression)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
