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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.sampling import few_label_rows
from .features import collection_stats, standardized, summarize
from .knn import KNN_TEMPERATURE, knn_classify
from .logreg import fewshot_linear
from .propagate import fewshot_propagate, knn_graph

if TYPE_CHECKING:
    import faiss

log = logging.getLogger(__name__)


PROTOCOLS = ("knn", "linear", "propagate", "full")
FROZEN_PROTOCOLS = ("knn", "linear", "propagate")


def fewshot_knn(x: np.ndarray, y: np.ndarray, rows: np.ndarray, test_x: np.ndarray,
                test_y: np.ndarray, k: int = 20, temperature: float = KNN_TEMPERATURE) -> dict[str, Any]:
    """Weighted kNN with only the labeled ``rows`` of the collection ``x`` (N, D) as database."""
    rows = np.sort(rows)
    res = knn_classify(np.asarray(x[rows]), y[rows], test_x, test_y, ks=[k],
                       temperature=temperature)
    used = max(res["k"])
    return {"top1": res["k"][used]["top1"], "top5": res["k"][used]["top5"], "k": used,
            "temperature": temperature}


@dataclass
class FewShotConfig:
    """Which protocols, label budget and seeds; the protocols' own settings."""

    protocols: list[str] = field(default_factory=lambda: list(FROZEN_PROTOCOLS))
    labels_per_class: int | None = None
    label_fraction: float | None = None
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    knn_k: int = 20
    temperature: float = KNN_TEMPERATURE
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
