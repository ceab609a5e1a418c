"""Few-label classification: every protocol on the same seeded, class-balanced labeled subset.

A collection of N images (the train split) of which only a few are labeled, and a labeled test
split. The protocols:

- ``knn``: weighted kNN vote (Σ exp(cos/T)) with only the labeled items as the database.
- ``linear``: multinomial logistic regression on the frozen features of the labeled items; the
  feature preprocessing (L2, or L2 + standardisation with the whole collection's statistics,
  which need no labels) and the L2 penalty are chosen by stratified cross-validation on the
  labeled items alone, never on test.
- ``propagate``: diffusion over the FAISS kNN graph of the whole collection, labeled and
  unlabeled (Zhou et al. 2004's normalised-graph diffusion, as Iscen et al. 2019 use it for
  semi-supervised learning): Z = (I − αS)⁻¹ B by conjugate gradient, B one-hot on the labeled
  rows and λ × the ``linear`` head's class probabilities on the others (λ = 0: plain label
  propagation); α and λ cross-validated on the labeled rows; a test image is scored as a leaf
  of the graph.
- ``full``: end-to-end fine-tuning of the backbone (:mod:`hebbret.finetuning`, FastHebb's
  protocol), tested with its own classifier; on a random-init backbone this is training from
  scratch.

The frozen-feature protocols work on embeddings (N, D) and share them across protocols and seeds.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ._io import write_json
from .artifacts import is_complete
from .data import few_label_rows
from .embed import extract_embeddings, load_embeddings
from .evaluate import (
    _feature_stats,
    _normalized,
    aligned_labels,
    evaluate_classifier,
    knn_classify,
    nearest_rows,
    top1_top5_hits,
)
from .finetuning import finetune
from .runs import read_card

if TYPE_CHECKING:
    import faiss

log = logging.getLogger(__name__)

PROTOCOLS = ("knn", "linear", "propagate", "full")
FROZEN_PROTOCOLS = ("knn", "linear", "propagate")


def labeled_subset(labels: np.ndarray, seed: int, labels_per_class: int | None = None,
                   label_fraction: float | None = None) -> np.ndarray:
    """The labeled rows of seed ``seed``: the same choice :func:`hebbret.finetuning.finetune`
    makes for the same arguments (sorted row numbers)."""
    return few_label_rows(labels, labels_per_class, label_fraction, seed)


# ---------------------------------------------------------------------------------------- knn


def fewshot_knn(x: np.ndarray, y: np.ndarray, rows: np.ndarray, test_x: np.ndarray,
                test_y: np.ndarray, k: int = 20, temperature: float = 0.07) -> dict[str, Any]:
    """Weighted kNN with only the labeled ``rows`` of the collection ``x`` (N, D) as database."""
    rows = np.sort(rows)
    res = knn_classify(np.asarray(x[rows]), y[rows], test_x, test_y, ks=[k],
                       temperature=temperature)
    used = max(res["k"])
    return {"top1": res["k"][used]["top1"], "top5": res["k"][used]["top5"], "k": used,
            "temperature": temperature}


# ------------------------------------------------------------------------------------- linear


def collection_stats(x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (D,) of the L2-normalised rows of the whole collection (no labels used)."""
    return _feature_stats(x, np.arange(len(x)))


def standardized(x: np.ndarray, stats: tuple[torch.Tensor, torch.Tensor], chunk: int = 4096
                 ) -> np.ndarray:
    """float32 (N, D): the L2-normalised rows of ``x`` standardised with the collection's
    ``stats`` (:func:`collection_stats`), the representation knn and propagate compare."""
    out = np.empty(x.shape, np.float32)
    for i in range(0, len(x), chunk):
        out[i: i + chunk] = _prepare(np.asarray(x[i: i + chunk]), "l2+standardize", stats).numpy()
    return out


def _prepare(x: np.ndarray, how: str, stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    z = _normalized(x)
    if how == "l2+standardize":
        z = (z - stats[0]) / stats[1]
    return z


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run tiny tensor ops on one thread: thread hand-offs cost more than the work (30× on a
    busy 2-core machine for an L × L logistic regression)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit_logreg_lbfgs(x: torch.Tensor, y: torch.Tensor, num_classes: int, penalty: float,
                      max_iter: int = 100) -> torch.nn.Linear:
    """Full-batch multinomial logistic regression: mean cross-entropy + penalty·‖W‖², L-BFGS."""
    with _one_thread():
        return _lbfgs(x, y, num_classes, penalty, max_iter)


def _lbfgs(x: torch.Tensor, y: torch.Tensor, num_classes: int, penalty: float,
           max_iter: int) -> torch.nn.Linear:
    head = torch.nn.Linear(x.shape[1], num_classes)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), lr=1, max_iter=max_iter,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(head(x), y) + penalty * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head


def _stratified_folds(y: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Positions 0..len(y)-1 split into ``folds`` parts, each class spread evenly."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(folds)]
    for c in np.unique(y):
        for j, pos in enumerate(rng.permutation(np.flatnonzero(y == c))):
            parts[j % folds].append(int(pos))
    return [np.array(sorted(p)) for p in parts if p]


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
        return torch.cat([_prepare(np.asarray(x[i: i + chunk]), self.preprocessing, self.stats)
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
    splits = _stratified_folds(y[rows], folds, seed) if folds >= 2 else []
    cv: dict[str, float] = {}
    bases = {}
    for how in preprocessing:
        z = _prepare(held, how, stats)
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
                head = _fit_logreg_lbfgs(zq[fit], ys[fit], num_classes, penalty)
                with torch.no_grad():
                    correct += int((head(zq[part]).argmax(1) == ys[part]).sum())
            cv[f"{how} {penalty:g}"] = 100.0 * correct / len(ys)
    best = max(cv, key=lambda key: (cv[key], key.startswith("l2+"), float(key.split()[1])))
    how, penalty = best.split()[0], float(best.split()[1])
    q, zq = bases[how]
    return LinearHead(how, penalty, q, _fit_logreg_lbfgs(zq, ys, num_classes, penalty), stats, cv,
                      len(splits))


def fewshot_linear(x: np.ndarray, y: np.ndarray, rows: np.ndarray, test_x: np.ndarray,
                   test_y: np.ndarray, seed: int = 0,
                   preprocessing: Sequence[str] = LINEAR_PREPROCESSING,
                   penalties: Sequence[float] = LINEAR_PENALTIES, folds: int = 5,
                   stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, Any]:
    """The ``linear`` protocol: :func:`fit_linear_head` on the labeled ``rows``, tested."""
    lin = fit_linear_head(x, y, rows, seed, preprocessing, penalties, folds, stats)
    top1 = top5 = 0
    for i in range(0, len(test_x), 4096):
        h1, h5 = top1_top5_hits(lin.logits(test_x[i: i + 4096]),
                                torch.from_numpy(np.asarray(test_y[i: i + 4096])))
        top1, top5 = top1 + h1, top5 + h5
    return {"top1": 100.0 * top1 / len(test_x), "top5": 100.0 * top5 / len(test_x),
            "preprocessing": lin.preprocessing, "penalty": lin.penalty,
            "cv_folds": lin.cv_folds, "cv_top1": lin.cv_top1,
            "solver": "L-BFGS, full batch, mean CE + penalty·‖W‖²"}


# ---------------------------------------------------------------------------------- propagate


def knn_graph(x: np.ndarray, k: int, index: faiss.Index | None = None, chunk: int = 4096
              ) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest neighbours of every row of ``x`` (N, D) by cosine, itself excluded.

    ``index``: a FAISS inner-product index over the L2-normalised rows of ``x`` in the same
    order (e.g. the collection's own index, exact or approximate); None: an exact IndexFlatIP.
    Returns similarities float32 (N, k) and neighbour rows int64 (N, k) (-1 where missing).
    """
    import faiss

    n, d = x.shape
    if index is None:
        index = faiss.IndexFlatIP(d)
        for i in range(0, n, chunk):
            index.add(_normalized(x[i: i + chunk]).numpy())
    elif index.ntotal != n or index.d != d:
        raise ValueError(f"the index holds {index.ntotal} × {index.d} vectors but the collection "
                         f"is {n} × {d}; build it from the same embeddings")
    k = min(k, n - 1)
    sims = np.empty((n, k), np.float32)
    nbrs = np.empty((n, k), np.int64)
    for i in range(0, n, chunk):
        q = _normalized(x[i: i + chunk]).numpy()
        s, j = index.search(q, k + 1)
        own = j == np.arange(i, i + len(q))[:, None]
        # drop each row's own entry (or the last one when the search did not return itself)
        drop = np.where(own.any(1), own.argmax(1), k)
        keep = np.ones_like(own)
        keep[np.arange(len(q)), drop] = False
        sims[i: i + len(q)] = s[keep].reshape(len(q), k)
        nbrs[i: i + len(q)] = j[keep].reshape(len(q), k)
    return sims, nbrs


def _conjugate_gradient(matvec, b: torch.Tensor, iters: int, tol: float = 1e-6) -> torch.Tensor:
    """Solve A X = B (A symmetric positive definite) column by column, all columns at once."""
    xs = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = (r * r).sum(0)
    for _ in range(iters):
        ap = matvec(p)
        alpha = rr / (p * ap).sum(0).clamp_min(1e-30)
        xs += alpha * p
        r -= alpha * ap
        rr_new = (r * r).sum(0)
        if bool((rr_new.sqrt() <= tol * b.norm(dim=0).clamp_min(1e-30)).all()):
            break
        p = r + (rr_new / rr.clamp_min(1e-30)) * p
        rr = rr_new
    return xs


@dataclass
class Propagation:
    """Labels spread over the collection's kNN graph."""

    pseudo_labels: np.ndarray  # int64 (N,): argmax of the diffusion (labeled rows: their label)
    certainty: np.ndarray  # float32 (N,) in [0, 1]: 1 − H(Z_i)/log C (labeled rows: 1)
    scores: np.ndarray  # float32 (N, C): the diffusion Z


def _affinities(graph: tuple[np.ndarray, np.ndarray], gamma: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """W = A + Aᵀ (sparse N × N), a_ij = max(cos, 0)^γ to the k nearest neighbours, and its
    degrees (N,)."""
    sims, nbrs = graph
    n = len(sims)
    valid = nbrs >= 0
    src = np.repeat(np.arange(n), sims.shape[1])[valid.ravel()]
    dst = nbrs.ravel()[valid.ravel()]
    w = np.clip(sims.ravel()[valid.ravel()], 0, None) ** gamma
    ij = torch.from_numpy(np.stack([np.concatenate([src, dst]), np.concatenate([dst, src])]))
    a = torch.sparse_coo_tensor(ij, torch.from_numpy(np.concatenate([w, w])).float(),
                                (n, n), check_invariants=False).coalesce()
    return a, torch.sparse.sum(a, dim=1).to_dense()


def _inv_sqrt(deg: torch.Tensor) -> torch.Tensor:
    """D^-1/2 of degrees (N,), 0 for isolated rows."""
    return torch.where(deg > 0, deg.clamp_min(1e-12).rsqrt(), torch.zeros_like(deg))


def graph_operator(graph: tuple[np.ndarray, np.ndarray], gamma: float = 3.0,
                   affinities: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """S = D^-1/2 W D^-1/2 (sparse N × N) of a kNN ``graph`` (:func:`knn_graph`: similarities
    and neighbours, each (N, k)): affinities a_ij = max(cos, 0)^γ, W = A + Aᵀ (``affinities``:
    W and its degrees if already computed)."""
    a, deg = affinities if affinities is not None else _affinities(graph, gamma)
    inv_sqrt = _inv_sqrt(deg)
    i, v = a.indices(), a.values()
    n = len(deg)
    return torch.sparse_coo_tensor(i, v * inv_sqrt[i[0]] * inv_sqrt[i[1]], (n, n),
                                   check_invariants=False).coalesce()


def propagate_labels(graph: tuple[np.ndarray, np.ndarray] | torch.Tensor, y: np.ndarray,
                     rows: np.ndarray, alpha: float = 0.9, gamma: float = 3.0, iters: int = 20,
                     prior: torch.Tensor | None = None) -> Propagation:
    """Zhou et al.'s diffusion Z = (I − αS)⁻¹ B over a kNN ``graph`` of the collection
    (:func:`knn_graph`, or its :func:`graph_operator` S), solved by ``iters`` conjugate-gradient
    steps, with B one-hot on the labeled ``rows`` and

    - ``prior`` None: zero elsewhere (each class's column scaled by 1/its count): plain label
      propagation;
    - ``prior`` (N, C), e.g. a linear head's class probabilities times a weight: those on the
      unlabeled rows, so the diffusion also smooths a classifier's predictions over the graph
      (Huang et al. 2021's "smooth" step) while the labeled rows keep their labels.
    """
    s = graph if isinstance(graph, torch.Tensor) else graph_operator(graph, gamma)
    n = s.shape[0]
    rows = np.sort(rows)
    num_classes = int(y[y >= 0].max()) + 1
    truth = torch.from_numpy(y[rows])
    if prior is None:
        counts = np.bincount(y[rows], minlength=num_classes).clip(min=1)
        b = torch.zeros(n, num_classes)
        b[torch.from_numpy(rows), truth] = torch.from_numpy(1.0 / counts[y[rows]]).float()
    else:
        b = prior.float().clone()
        b[torch.from_numpy(rows)] = F.one_hot(truth, b.shape[1]).float()
    z = _conjugate_gradient(lambda p: p - alpha * torch.sparse.mm(s, p), b, iters).clamp_min(0)
    p = z / z.sum(1, keepdim=True).clamp_min(1e-12)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(1)
    certainty = torch.where(z.sum(1) > 0, 1 - entropy / math.log(num_classes),
                            torch.zeros(n)).clamp(0, 1)
    pseudo = z.argmax(1).numpy().astype(np.int64)
    pseudo[rows] = y[rows]
    cert = certainty.numpy().astype(np.float32)
    cert[rows] = 1.0
    return Propagation(pseudo, cert, z.numpy().astype(np.float32))


PROPAGATION_ALPHAS = (0.5, 0.8, 0.9, 0.99)  # diffusion strengths cross-validated by `propagate`
PRIOR_WEIGHTS = (0.0, 1.0)  # weights of the linear head's predictions, cross-validated too


def choose_diffusion(graph: tuple[np.ndarray, np.ndarray] | torch.Tensor, y: np.ndarray,
                     rows: np.ndarray, alphas: Sequence[float] = PROPAGATION_ALPHAS,
                     gamma: float = 3.0, folds: int = 5, seed: int = 0,
                     prior: Callable[[np.ndarray], torch.Tensor] | None = None,
                     prior_weights: Sequence[float] = PRIOR_WEIGHTS
                     ) -> tuple[float, float, dict[str, float]]:
    """The diffusion strength α (and, with ``prior``, the prior's weight) whose propagation
    from 4/5 of the labeled ``rows`` labels the held-out fifth best (stratified folds over the
    labeled rows only; ties: the stronger α, then the smaller weight). ``prior``: a function of
    the fold's labeled rows giving the (N, C) prior (see :func:`propagate_labels`), refitted
    per fold; weight 0 is plain label propagation.
    Returns (alpha, weight, {"α/weight": held-out accuracy %})."""
    rows = np.sort(rows)
    weights = prior_weights if prior is not None else (0.0,)
    folds = min(folds, int(np.bincount(y[rows]).max()))
    if folds < 2:
        return max(alphas), min(weights), {}
    s = graph if isinstance(graph, torch.Tensor) else graph_operator(graph, gamma)
    correct = {(a, w): 0 for a in alphas for w in weights}
    for part in _stratified_folds(y[rows], folds, seed):
        fit = rows[np.setdiff1d(np.arange(len(rows)), part)]
        fold_prior = prior(fit) if prior is not None and any(weights) else None
        for alpha, weight in correct:
            prop = propagate_labels(s, y, fit, alpha, gamma,
                                    prior=fold_prior * weight if weight else None)
            correct[alpha, weight] += int((prop.pseudo_labels[rows[part]] == y[rows[part]]).sum())
    scores = {key: 100.0 * c / len(rows) for key, c in correct.items()}
    alpha, weight = max(scores, key=lambda k: (scores[k], k[0], -k[1]))
    return alpha, weight, {f"{a:g}/{w:g}": v for (a, w), v in scores.items()}


def fewshot_propagate(x: np.ndarray, y: np.ndarray, rows: np.ndarray, test_x: np.ndarray,
                      test_y: np.ndarray, *, graph_k: int = 10, alpha: float | None = None,
                      prior_weight: float | None = None, gamma: float = 3.0,
                      graph: tuple[np.ndarray, np.ndarray] | None = None,
                      index: faiss.Index | None = None, seed: int = 0,
                      head_x: np.ndarray | None = None, head_test_x: np.ndarray | None = None,
                      stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, Any]:
    """The ``propagate`` protocol.

    1. A linear head (:func:`fit_linear_head`) on the labeled ``rows`` of ``head_x`` (default
       ``x``) predicts class probabilities P for the whole collection.
    2. Labels and λ·P are diffused over the collection's kNN graph of ``x`` (``graph``, else
       built with ``graph_k`` neighbours from ``index`` or exactly), B one-hot on the labeled
       rows: Z = (I − αS)⁻¹ B (:func:`propagate_labels`; λ = 0: plain label propagation).
       ``alpha``, ``prior_weight`` λ None: cross-validated on the labeled rows
       (:func:`choose_diffusion`; the head refitted per fold with the preprocessing and penalty
       that step 1's CV chose on all labeled rows, which slightly favours λ = 1; with fewer than
       two labels per class: the strongest α and λ = 0).
    3. A test image t joins the graph as a leaf and gets the same fixed point. In the
       random-walk form of the diffusion, U = D^-1/2 Z satisfies u_i = α Σ_j (w_ij/d_i) u_j +
       b_i/√d_i, so t scores α Σ_j a_tj u_j / Σ_j a_tj + λ P_t / √d_t over its ``graph_k``
       nearest collection rows j (searched in ``index``, else exactly), a_tj = max(cos, 0)^γ,
       with d_t = 2 Σ_j a_tj: its degree if its neighbours also listed it, as a row of the
       symmetrised graph on average is.
    """
    head_x = x if head_x is None else head_x
    head_test_x = test_x if head_test_x is None else head_test_x
    graph = graph if graph is not None else knn_graph(x, graph_k, index)
    graph_k = graph[0].shape[1]
    affinities = _affinities(graph, gamma)
    s = graph_operator(graph, gamma, affinities)
    lin = fit_linear_head(head_x, y, rows, seed, stats=stats)
    zq = lin.project(head_x)  # (N, L); every fold's head lives in this basis too
    num_classes = lin.head.out_features
    with torch.no_grad():
        prior = torch.softmax(lin.head(zq), 1)

    def fold_prior(fit: np.ndarray) -> torch.Tensor:
        head = _fit_logreg_lbfgs(zq[fit], torch.from_numpy(y[fit]), num_classes, lin.penalty)
        with torch.no_grad():
            return torch.softmax(head(zq), 1)

    cv: dict[str, float] = {}
    if alpha is None or prior_weight is None:
        chosen_alpha, chosen_weight, cv = choose_diffusion(
            s, y, rows, alphas=[alpha] if alpha is not None else PROPAGATION_ALPHAS, gamma=gamma,
            seed=seed, prior=fold_prior,
            prior_weights=[prior_weight] if prior_weight is not None else PRIOR_WEIGHTS)
        alpha = chosen_alpha if alpha is None else alpha
        prior_weight = chosen_weight if prior_weight is None else prior_weight
    prop = propagate_labels(s, y, rows, alpha, gamma,
                            prior=prior * prior_weight if prior_weight else None)
    u = torch.from_numpy(prop.scores) * _inv_sqrt(affinities[1]).unsqueeze(1)
    top1 = top5 = 0
    for part, sims, nbrs in nearest_rows(test_x, x, graph_k, index=index):
        a = sims.clamp_min(0) ** gamma
        a_sum = a.sum(1, keepdim=True).clamp_min(1e-12)
        score = alpha * (a.unsqueeze(2) * u[nbrs]).sum(1) / a_sum
        if prior_weight:
            own = torch.softmax(lin.logits(head_test_x[part]), 1)
            score += prior_weight * own / (2 * a_sum).sqrt()
        h1, h5 = top1_top5_hits(score, torch.from_numpy(np.asarray(test_y[part])))
        top1, top5 = top1 + h1, top5 + h5
    unlabeled = np.setdiff1d(np.arange(len(x)), rows)
    known = y[unlabeled] >= 0
    pseudo_acc = (100.0 * float((prop.pseudo_labels[unlabeled][known]
                                 == y[unlabeled][known]).mean()) if known.any() else None)
    return {"top1": 100.0 * top1 / len(test_x), "top5": 100.0 * top5 / len(test_x),
            "graph_k": graph_k, "alpha": alpha, "prior_weight": prior_weight,
            "cv_top1": cv, "gamma": gamma,
            "prior": f"linear ({lin.preprocessing}, penalty {lin.penalty:g})",
            "pseudo_label_accuracy": pseudo_acc,
            "mean_certainty": float(prop.certainty[unlabeled].mean()) if len(unlabeled) else None}


# ------------------------------------------------------------------------------------ driver


@dataclass
class FewShotConfig:
    """Which protocols, label budget and seeds; the protocols' own settings."""

    protocols: list[str] = field(default_factory=lambda: list(FROZEN_PROTOCOLS))
    labels_per_class: int | None = None
    label_fraction: float | None = None
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    knn_k: int = 20
    temperature: float = 0.07
    standardize: bool = True  # knn, propagate: compare L2-normalised features standardised with
    #                           the collection's statistics (no labels); linear chooses by CV
    graph_k: int = 10  # neighbours per node of the propagation graph
    graph_index: str = "Flat"  # FAISS factory the graph is searched with (inner product on the
    #                            compared features); e.g. "PCA256,Flat" for very wide features
    alpha: float | None = None  # diffusion strength; None: cross-validated on the labeled rows
    prior_weight: float | None = None  # weight of the linear head's predictions in the
    #                                    diffusion (0: plain label propagation); None: CV
    gamma: float = 3.0  # affinity power

    def __post_init__(self) -> None:
        unknown = sorted(set(self.protocols) - set(PROTOCOLS))
        if unknown:
            raise ValueError(f"unknown few-label protocols {unknown}; choose from {list(PROTOCOLS)}")
        if (self.labels_per_class is None) == (self.label_fraction is None):
            raise ValueError("give exactly one of labels_per_class and label_fraction")
        if not self.seeds:
            raise ValueError("give at least one seed")


def summarize(values: list[float]) -> dict[str, Any]:
    """mean, sample std (0 for one value) and n of per-seed accuracies."""
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
            "n": len(arr), "values": [float(v) for v in arr]}


def evaluate_frozen(x: np.ndarray, y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                    cfg: FewShotConfig, index: faiss.Index | None = None) -> dict[str, Any]:
    """Every frozen-feature protocol of ``cfg`` for every seed: {protocol: {"seeds": {seed:
    result}, "top1": summary}}. ``x`` (N, D) is the whole collection, ``y`` its labels;
    ``index``: a FAISS inner-product index over the collection's compared features (see
    :func:`knn_graph`) for the propagation graph; None: one built from ``cfg.graph_index``."""
    y = np.asarray(y, dtype=np.int64)
    if (y < 0).all():
        raise ValueError("the collection is unlabeled; few-label evaluation needs class "
                         "sub-folders")
    stats = collection_stats(x)
    if cfg.standardize and {"knn", "propagate"} & set(cfg.protocols):
        xs, test_xs = standardized(x, stats), standardized(test_x, stats)
    else:
        xs, test_xs = x, test_x
    graph = None
    if "propagate" in cfg.protocols:
        if index is None and cfg.graph_index.strip() != "Flat":
            from .index import filled_index

            index = filled_index(xs, cfg.graph_index)
        graph = knn_graph(xs, cfg.graph_k, index)
    out: dict[str, Any] = {}
    for protocol in (p for p in cfg.protocols if p in FROZEN_PROTOCOLS):
        per_seed = {}
        for seed in cfg.seeds:
            rows = labeled_subset(y, seed, cfg.labels_per_class, cfg.label_fraction)
            if protocol == "knn":
                r = fewshot_knn(xs, y, rows, test_xs, test_y, cfg.knn_k, cfg.temperature)
            elif protocol == "linear":
                r = fewshot_linear(x, y, rows, test_x, test_y, seed, stats=stats)
            else:
                r = fewshot_propagate(xs, y, rows, test_xs, test_y, alpha=cfg.alpha,
                                      prior_weight=cfg.prior_weight, gamma=cfg.gamma,
                                      graph=graph, index=index, seed=seed, head_x=x,
                                      head_test_x=test_x, stats=stats)
            per_seed[seed] = {"labeled": len(rows), **r}
            log.info("few-label %s seed %d: top-1 %.2f%%", protocol, seed, r["top1"])
        out[protocol] = {"seeds": per_seed,
                         "top1": summarize([r["top1"] for r in per_seed.values()])}
    return out


def evaluate_embeddings(train_emb: str | os.PathLike, test_emb: str | os.PathLike,
                        cfg: FewShotConfig) -> dict[str, Any]:
    """:func:`evaluate_frozen` on two embeddings dirs: the collection and the test images."""

    x, items, meta = load_embeddings(train_emb)
    tx, titems, tmeta = load_embeddings(test_emb)
    y = np.array([it["label"] for it in items], dtype=np.int64)
    ty = aligned_labels(titems, tmeta.get("classes"), meta.get("classes"), str(test_emb))
    return evaluate_frozen(x, y, tx, ty, cfg)


def evaluate_full(run: str | os.PathLike, data: str, test_data: str, out: str | os.PathLike,
                  cfg: FewShotConfig, split: str = "train", test_split: str = "test",
                  data_root: str | None = None, finetune_options: dict[str, Any] | None = None,
                  device: str = "auto", quiet: bool = False) -> dict[str, Any]:
    """The ``full`` protocol: one fine-tuned run per seed in ``OUT/full-seed<S>`` (reused when
    complete), each tested with its own classifier: {"seeds": {seed: result}, "top1": summary}."""
    per_seed = {}
    for seed in cfg.seeds:
        tuned = Path(out) / f"full-seed{seed}"
        if not is_complete(tuned):
            finetune(run=str(run), data=data, split=split, data_root=data_root,
                     labels_per_class=cfg.labels_per_class, label_fraction=cfg.label_fraction,
                     mode="full", seed=seed, out=str(tuned), device=device, quiet=quiet,
                     **(finetune_options or {}))
        acc = evaluate_classifier(tuned, test_data, test_split, data_root, device=device)
        per_seed[seed] = {"labeled": read_card(tuned).training["labeled_items"],
                          "top1": acc["top1"], "top5": acc["top5"]}
    return {"seeds": per_seed, "top1": summarize([r["top1"] for r in per_seed.values()])}


def run_fewshot(run: str | os.PathLike, data: str, test_data: str, out: str | os.PathLike,
                cfg: FewShotConfig, split: str = "train", test_split: str = "test",
                data_root: str | None = None, finetune_options: dict[str, Any] | None = None,
                device: str = "auto", quiet: bool = False) -> dict[str, Any]:
    """Every protocol of ``cfg`` for the backbone of run dir ``run``; writes ``OUT/fewshot.json``.

    Embeds ``data`` (the collection, labeled) and ``test_data`` into ``OUT/emb_train`` and
    ``OUT/emb_test`` (reused when complete), runs the frozen protocols on them, and
    :func:`evaluate_full` for ``full``.
    """
    out = Path(out)
    embs = {}
    for name, source, sp in (("train", data, split), ("test", test_data, test_split)):
        embs[name] = out / f"emb_{name}"
        if not is_complete(embs[name]):
            extract_embeddings(run, source, embs[name], split=sp, data_root=data_root,
                               device=device, quiet=quiet)
    protocols = evaluate_embeddings(embs["train"], embs["test"], cfg)
    if "full" in cfg.protocols:
        protocols["full"] = evaluate_full(run, data, test_data, out, cfg, split, test_split,
                                          data_root, finetune_options, device, quiet)
    results = {"config": asdict(cfg), "run": str(run), "protocols": protocols}
    write_json(out / "fewshot.json", results)
    return results
