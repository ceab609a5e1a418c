"""Label propagation over the collection's kNN graph (Zhou et al. 2004's normalised diffusion,
as Iscen et al. 2019 use it), smoothed with a linear head's predictions, its cross-validation,
and the ``propagate`` few-label protocol."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.sampling import stratified_folds
from .features import l2_normalized, top1_top5_hits
from .knn import nearest_rows
from .logreg import fit_linear_head, fit_logreg

if TYPE_CHECKING:
    import faiss


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
            index.add(l2_normalized(x[i: i + chunk]).numpy())
    elif index.ntotal != n or index.d != d:
        raise ValueError(f"the index holds {index.ntotal} × {index.d} vectors but the collection "
                         f"is {n} × {d}; build it from the same embeddings")
    k = min(k, n - 1)
    sims = np.empty((n, k), np.float32)
    nbrs = np.empty((n, k), np.int64)
    for i in range(0, n, chunk):
        q = l2_normalized(x[i: i + chunk]).numpy()
        s, j = index.search(q, k + 1)
        own = j == np.arange(i, i + len(q))[:, None]
        # drop each row's own entry (or the last one when the search did not return itself)
        drop = np.where(own.any(1), own.argmax(1), k)
        keep = np.ones_like(own)
        keep[np.arange(len(q)), drop] = False
        sims[i: i + len(q)] = s[keep].reshape(len(q), k)
        nbrs[i: i + len(q)] = j[keep].reshape(len(q), k)
    return sims, nbrs


def conjugate_gradient(matvec, b: torch.Tensor, iters: int, tol: float = 1e-6) -> torch.Tensor:
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


def graph_affinities(graph: tuple[np.ndarray, np.ndarray], gamma: float
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


def inverse_sqrt_degrees(deg: torch.Tensor) -> torch.Tensor:
    """D^-1/2 of degrees (N,), 0 for isolated rows."""
    return torch.where(deg > 0, deg.clamp_min(1e-12).rsqrt(), torch.zeros_like(deg))


def graph_operator(graph: tuple[np.ndarray, np.ndarray], gamma: float = 3.0,
                   affinities: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """S = D^-1/2 W D^-1/2 (sparse N × N) of a kNN ``graph`` (:func:`knn_graph`: similarities
    and neighbours, each (N, k)): affinities a_ij = max(cos, 0)^γ, W = A + Aᵀ (``affinities``:
    W and its degrees if already computed)."""
    a, deg = affinities if affinities is not None else graph_affinities(graph, gamma)
    inv_sqrt = inverse_sqrt_degrees(deg)
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
    z = conjugate_gradient(lambda p: p - alpha * torch.sparse.mm(s, p), b, iters).clamp_min(0)
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
    for part in stratified_folds(y[rows], folds, seed):
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
    affinities = graph_affinities(graph, gamma)
    s = graph_operator(graph, gamma, affinities)
    lin = fit_linear_head(head_x, y, rows, seed, stats=stats)
    prior, alpha, prior_weight, cv = _choose(s, lin, head_x, y, rows, alpha, prior_weight, gamma,
                                             seed)
    prop = propagate_labels(s, y, rows, alpha, gamma,
                            prior=prior * prior_weight if prior_weight else None)
    u = torch.from_numpy(prop.scores) * inverse_sqrt_degrees(affinities[1]).unsqueeze(1)
    top1 = top5 = 0
    for part, sims, nbrs in nearest_rows(test_x, x, graph_k, index=index):
        own = (torch.softmax(lin.logits(head_test_x[part]), 1) * prior_weight
               if prior_weight else None)
        h1, h5 = top1_top5_hits(leaf_scores(sims, nbrs, u, alpha, gamma, own),
                                torch.from_numpy(np.asarray(test_y[part])))
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


def _choose(s: torch.Tensor, lin: Any, head_x: np.ndarray, y: np.ndarray, rows: np.ndarray,
            alpha: float | None, prior_weight: float | None, gamma: float, seed: int
            ) -> tuple[torch.Tensor, float, float, dict[str, float]]:
    """The linear head's class probabilities (N, C) over the collection, and α and λ: as
    given, or cross-validated on the labeled rows with the head refitted per fold."""
    zq = lin.project(head_x)  # (N, L); every fold's head lives in this basis too
    num_classes = lin.head.out_features
    with torch.no_grad():
        prior = torch.softmax(lin.head(zq), 1)

    def fold_prior(fit: np.ndarray) -> torch.Tensor:
        head = fit_logreg(zq[fit], torch.from_numpy(y[fit]), num_classes, lin.penalty)
        with torch.no_grad():
            return torch.softmax(head(zq), 1)

    if alpha is not None and prior_weight is not None:
        return prior, alpha, prior_weight, {}
    chosen_alpha, chosen_weight, cv = choose_diffusion(
        s, y, rows, alphas=[alpha] if alpha is not None else PROPAGATION_ALPHAS, gamma=gamma,
        seed=seed, prior=fold_prior,
        prior_weights=[prior_weight] if prior_weight is not None else PRIOR_WEIGHTS)
    return (prior, chosen_alpha if alpha is None else alpha,
            chosen_weight if prior_weight is None else prior_weight, cv)


def leaf_scores(sims: torch.Tensor, nbrs: torch.Tensor, u: torch.Tensor, alpha: float,
                gamma: float, prior: torch.Tensor | None = None) -> torch.Tensor:
    """Class scores (B, C) of B test images joined to the graph as leaves: α Σ_j a_tj u_j /
    Σ_j a_tj (+ prior_t / √d_t), a_tj = max(cos, 0)^γ to its neighbours ``nbrs`` (B, k) at
    cosine ``sims`` (B, k), u = D^-½ Z (N, C), d_t = 2 Σ_j a_tj; ``prior`` (B, C): λ P_t."""
    a = sims.clamp_min(0) ** gamma
    a_sum = a.sum(1, keepdim=True).clamp_min(1e-12)
    score = alpha * (a.unsqueeze(2) * u[nbrs]).sum(1) / a_sum
    if prior is not None:
        score += prior / (2 * a_sum).sqrt()
    return score
