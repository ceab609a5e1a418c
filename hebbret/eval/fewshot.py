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

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import FROZEN_PROTOCOLS, KNN_TEMPERATURE, FewShotConfig
from ..data.sampling import few_label_rows
from .features import collection_stats, standardized, summarize
from .knn import knn_classify
from .logreg import fewshot_linear
from .propagate import fewshot_propagate, knn_graph

if TYPE_CHECKING:
    import faiss

log = logging.getLogger(__name__)


def fewshot_knn(x: np.ndarray, y: np.ndarray, rows: np.ndarray, test_x: np.ndarray,
                test_y: np.ndarray, k: int = 20, temperature: float = KNN_TEMPERATURE) -> dict[str, Any]:
    """Weighted kNN with only the labeled ``rows`` of the collection ``x`` (N, D) as database."""
    rows = np.sort(rows)
    res = knn_classify(np.asarray(x[rows]), y[rows], test_x, test_y, ks=[k],
                       temperature=temperature)
    used = max(res["k"])
    return {"top1": res["k"][used]["top1"], "top5": res["k"][used]["top5"], "k": used,
            "temperature": temperature}


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
            from ..index import filled_index

            index = filled_index(xs, cfg.graph_index)
        graph = knn_graph(xs, cfg.graph_k, index)
    out: dict[str, Any] = {}
    for protocol in (p for p in cfg.protocols if p in FROZEN_PROTOCOLS):
        per_seed = {}
        for seed in cfg.seeds:
            rows = few_label_rows(y, cfg.labels_per_class, cfg.label_fraction, seed)
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
