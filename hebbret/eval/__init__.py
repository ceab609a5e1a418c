"""Evaluation of frozen embeddings, one protocol per module (docs/design.md §7):

- :mod:`.knn`: weighted kNN (exact cosine blocks or a FAISS index);
- :mod:`.retrieval`: mAP, mAP@k, P@k, Recall@k;
- :mod:`.logreg`: the one L-BFGS logistic regression, the few-label linear head, the linear probe;
- :mod:`.readout`: SoftHebb's published linear readout;
- :mod:`.propagate`: label propagation over the collection's kNN graph;
- :mod:`.fewshot`: the few-label protocols on one seeded labeled subset per seed;
- :mod:`.embeddings`: any of them on embeddings dirs, with results JSON;
- :mod:`.features`: what they share (checks, L2, standardisation, top-k hits).

A fine-tuned run's own classifier is scored by :func:`hebbret.finetuning.evaluate_classifier`.
"""

from ..config import DEFAULT_KS, FROZEN_PROTOCOLS, KNN_TEMPERATURE, PROTOCOLS, RETRIEVAL_KS, FewShotConfig
from .embeddings import aligned_labels, evaluate, evaluate_embeddings, load_labeled_pair
from .fewshot import evaluate_frozen
from .knn import knn_classify, nearest_rows, weighted_vote
from .logreg import fit_linear_head, fit_logreg, linear_probe
from .propagate import knn_graph, propagate_labels
from .readout import softhebb_readout
from .retrieval import retrieval_metrics

__all__ = [
    "DEFAULT_KS", "FROZEN_PROTOCOLS", "KNN_TEMPERATURE", "PROTOCOLS", "RETRIEVAL_KS",
    "FewShotConfig", "aligned_labels", "evaluate", "evaluate_embeddings", "evaluate_frozen",
    "fit_linear_head", "fit_logreg", "knn_classify", "knn_graph", "linear_probe",
    "load_labeled_pair", "nearest_rows", "propagate_labels", "retrieval_metrics",
    "softhebb_readout", "weighted_vote",
]
