"""Multinomial logistic regression on frozen features: the L-BFGS core, the few-label linear head
(fitted in the basis of its labeled rows, chosen by cross-validation) and the linear probe."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ..data.sampling import held_out, stratified_folds
from .features import (
    accuracy,
    check_labeled,
    collection_stats,
    feature_stats,
    l2_normalized,
    one_thread,
    prepare,
)

log = logging.getLogger(__name__)


class Rows(Protocol):
    """(N, D) rows that can be sliced: a tensor, or features preprocessed on the fly."""

    def __len__(self) -> int: ...

    def __getitem__(self, rows: slice) -> torch.Tensor: ...


CHUNK = 4096  # rows per forward/backward pass when the loss is summed in pieces


def fit_logreg(x: Rows, y: torch.Tensor, num_classes: int, penalty: float,
               max_iter: int = 100, chunk: int = CHUNK) -> torch.nn.Linear:
    """Multinomial logistic regression from zero weights: mean cross-entropy over all rows +
    penalty·‖W‖², minimised by full-batch L-BFGS (strong Wolfe line search) on one thread.

    x (N, D) float rows (float16 are cast per chunk), y int64 (N,) -> a D -> C linear head.
    Over ``chunk`` rows the loss is summed chunk by chunk, so x need not be one tensor in memory.
    """
    n = len(x)
    head = torch.nn.Linear(x[0:1].shape[1], num_classes)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), lr=1, max_iter=max_iter,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        if n <= chunk:
            loss = F.cross_entropy(head(x[0:n].float()), y) + penalty * head.weight.pow(2).sum()
            loss.backward()
            return loss
        loss = penalty * head.weight.pow(2).sum()
        loss.backward()
        total = loss.detach()
        for i in range(0, n, chunk):
            part = F.cross_entropy(head(x[i: i + chunk].float()), y[i: i + chunk],
                                   reduction="sum") / n
            part.backward()
            total = total + part.detach()
        return total

    with one_thread():
        opt.step(closure)
    return head


LINEAR_PREPROCESSING = ("l2", "l2+standardize")
LINEAR_PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1)


@dataclass
class LinearHead:
    """Multinomial logistic regression on frozen features, fitted in an orthonormal basis of its
    labeled rows (after preprocessing): features (N, D) -> logits (N, C)."""

    preprocessing: str  # "l2" or "l2+standardize"
    penalty: float
    basis: torch.Tensor  # float32 (D, L)
    head: torch.nn.Linear  # L -> C
    stats: tuple[torch.Tensor, torch.Tensor]  # the collection's feature mean/std (D,)
    cv_top1: dict[str, float]
    cv_folds: int

    def project(self, x: np.ndarray, chunk: int = 4096) -> torch.Tensor:
        """(N, L): the preprocessed rows of ``x`` in the head's basis."""
        return torch.cat([prepare(np.asarray(x[i: i + chunk]), self.preprocessing, self.stats)
                          @ self.basis for i in range(0, len(x), chunk)])

    @torch.no_grad()
    def logits(self, x: np.ndarray) -> torch.Tensor:
        return self.head(self.project(x))


def fit_linear_head(x: np.ndarray, y: np.ndarray, rows: np.ndarray, seed: int = 0,
                    preprocessing: Sequence[str] = LINEAR_PREPROCESSING,
                    penalties: Sequence[float] = LINEAR_PENALTIES, folds: int = 5,
                    stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> LinearHead:
    """A linear head on the frozen features of the labeled ``rows``; (preprocessing, penalty)
    chosen by stratified ``folds``-fold cross-validation on those rows only.

    The L2-penalised optimum W lies in the span of the labeled rows, so the head is fitted in an
    orthonormal basis Q of that span (L rows -> L coordinates, ‖W‖ = ‖Qᵀ W‖): the same solution
    at a cost independent of D. ``stats``: the collection's feature mean/std
    (:func:`collection_stats`), computed if None.
    """
    rows = np.sort(rows)
    ys = torch.from_numpy(y[rows])
    num_classes = int(y[y >= 0].max()) + 1
    stats = stats if stats is not None else collection_stats(x)
    held = np.asarray(x[rows])
    folds = min(folds, int(np.bincount(y[rows]).max()))
    splits = stratified_folds(y[rows], folds, seed) if folds >= 2 else []
    cv: dict[str, float] = {}
    bases = {}
    for how in preprocessing:
        z = prepare(held, how, stats)
        q = torch.linalg.qr(z.T.double()).Q.float()  # (D, L): orthonormal basis of the rows
        bases[how] = (q, z @ q)
        for penalty in penalties:
            if not splits:
                cv[f"{how} {penalty:g}"] = 0.0
                continue
            zq = bases[how][1]
            correct = 0
            for part in splits:
                fit = np.setdiff1d(np.arange(len(ys)), part)
                head = fit_logreg(zq[fit], ys[fit], num_classes, penalty)
                with torch.no_grad():
                    correct += int((head(zq[part]).argmax(1) == ys[part]).sum())
            cv[f"{how} {penalty:g}"] = 100.0 * correct / len(ys)
    best = max(cv, key=lambda key: (cv[key], key.startswith("l2+"), float(key.split()[1])))
    how, penalty = best.split()[0], float(best.split()[1])
    q, zq = bases[how]
    return LinearHead(how, penalty, q, fit_logreg(zq, ys, num_classes, penalty), stats, cv,
                      len(splits))


def fewshot_linear(x: np.ndarray, y: np.ndarray, rows: np.ndarray, test_x: np.ndarray,
                   test_y: np.ndarray, seed: int = 0,
                   preprocessing: Sequence[str] = LINEAR_PREPROCESSING,
                   penalties: Sequence[float] = LINEAR_PENALTIES, folds: int = 5,
                   stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, Any]:
    """The ``linear`` protocol: :func:`fit_linear_head` on the labeled ``rows``, tested."""
    lin = fit_linear_head(x, y, rows, seed, preprocessing, penalties, folds, stats)
    top1, top5 = accuracy(lin.logits, test_x, test_y)
    return {"top1": top1, "top5": top5,
            "preprocessing": lin.preprocessing, "penalty": lin.penalty,
            "cv_folds": lin.cv_folds, "cv_top1": lin.cv_top1,
            "solver": "L-BFGS, full batch, mean CE + penalty·‖W‖²"}


def linear_probe(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray,
                 test_labels: np.ndarray, penalties: Sequence[float] = LINEAR_PENALTIES,
                 val_fraction: float = 0.1, max_iter: int = 100, seed: int = 0,
                 memory_mb: int = 2048) -> dict[str, Any]:
    """Multinomial logistic regression (:func:`fit_logreg`) on frozen, L2-normalised,
    standardised features.

    The L2 penalty is chosen on a class-stratified validation split carved from train
    (:func:`~hebbret.data.held_out`, never test) among the few-label head's ``LINEAR_PENALTIES``
    (not 0: without a penalty a full-batch solver has no finite optimum on separable
    features); the chosen value is then refit on all of train.
    The preprocessed features are held in memory when they fit in ``memory_mb`` (float32, else
    float16), otherwise recomputed from ``train_feats`` (e.g. a memory-mapped (N, D) array
    larger than RAM) at every L-BFGS evaluation.

    Returns:
        {"top1", "top5", "penalty", "val_top1": {penalty: %}, ...}
    """
    check_labeled(train_feats, train_labels, "train")
    check_labeled(test_feats, test_labels, "test")
    if train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"train dimension {train_feats.shape[1]} != test dimension "
                         f"{test_feats.shape[1]}")
    y = np.asarray(train_labels, dtype=np.int64)
    if len(np.unique(y)) < 2:
        raise ValueError(f"a linear probe needs at least 2 classes in the training embeddings; "
                         f"they hold only class {int(y[0])}")
    num_classes = int(y.max()) + 1
    val = held_out(y, val_fraction, seed)
    if not val.any():
        raise ValueError("the linear probe needs more train items per class to carve out a "
                         f"validation split of {val_fraction:.0%}")
    fit = np.flatnonzero(~val)
    mean, std = feature_stats(train_feats, fit)
    val_scores = {}
    for penalty in penalties:
        model = fit_logreg(_standardized(train_feats, fit, mean, std, memory_mb),
                           torch.from_numpy(y[fit]), num_classes, penalty, max_iter)
        val_scores[penalty] = _accuracy(model, train_feats[val], y[val], mean, std)[0]
        log.info("linear probe: penalty %g -> val top-1 %.2f%%", penalty, val_scores[penalty])
    best = max(val_scores, key=lambda p: (val_scores[p], -p))
    everything = np.arange(len(y))
    mean, std = feature_stats(train_feats, everything)
    model = fit_logreg(_standardized(train_feats, everything, mean, std, memory_mb),
                       torch.from_numpy(y), num_classes, best, max_iter)
    top1, top5 = _accuracy(model, test_feats, np.asarray(test_labels), mean, std)
    return {"top1": top1, "top5": top5, "penalty": best, "val_top1": val_scores,
            "val_size": int(val.sum()), "max_iter": max_iter,
            "solver": "L-BFGS, full batch, mean CE + penalty·‖W‖²",
            "features": "L2-normalised, standardised with train statistics"}


class _OnTheFly:
    """Rows of ``x`` L2-normalised and standardised when sliced (features too large to hold)."""

    def __init__(self, x: np.ndarray, rows: np.ndarray, mean: torch.Tensor,
                 std: torch.Tensor) -> None:
        self.x, self.rows, self.mean, self.std = x, rows, mean, std

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, part: slice) -> torch.Tensor:
        return (l2_normalized(self.x[self.rows[part]]) - self.mean) / self.std


def _standardized(x: np.ndarray, rows: np.ndarray, mean: torch.Tensor, std: torch.Tensor,
                  budget_mb: int, chunk: int = CHUNK) -> Rows:
    """The L2-normalised, standardised ``rows`` (sorted) of ``x``: held in memory (float32, or
    float16 when that is what fits in ``budget_mb``), else computed when sliced."""
    for dtype, size in ((torch.float32, 4), (torch.float16, 2)):
        if len(rows) * x.shape[1] * size <= budget_mb * 2**20:
            out = torch.empty(len(rows), x.shape[1], dtype=dtype)
            for i in range(0, len(rows), chunk):
                out[i: i + chunk] = (l2_normalized(x[rows[i: i + chunk]]) - mean) / std
            return out
    return _OnTheFly(x, rows, mean, std)


def _accuracy(model: torch.nn.Linear, x: np.ndarray, y: np.ndarray, mean: torch.Tensor,
              std: torch.Tensor) -> tuple[float, float]:
    """Top-1 / top-5 (%) of the probe on rows of x standardised with the fit's ``mean``, ``std``."""
    return accuracy(lambda part: model((l2_normalized(part) - mean) / std), x, y, CHUNK)
