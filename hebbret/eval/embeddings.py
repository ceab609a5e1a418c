"""Evaluations of embeddings dirs: labels aligned across two folders, one protocol on a pair
of dirs, its results JSON."""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from .._io import write_json
from ..config import FewShotConfig
from ..embed import load_embeddings
from .fewshot import evaluate_frozen
from .knn import knn_classify
from .logreg import linear_probe
from .readout import softhebb_readout
from .retrieval import retrieval_metrics

log = logging.getLogger(__name__)




def labels_of(items: list[dict]) -> np.ndarray:
    return np.array([it["label"] for it in items], dtype=np.int64)


def aligned_labels(items: list[dict], classes: list[str] | None, reference: list[str] | None,
                   name: str) -> np.ndarray:
    """Labels of ``items`` renumbered into ``reference``'s class order (two folders number
    their classes independently, by sorted name). Raises if a class is unknown to it."""
    labels = labels_of(items)
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
    return x_train, labels_of(items_train), x_test, y_test


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
    y_train = labels_of(items_train)
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


def evaluate_embeddings(train_emb: str | os.PathLike, test_emb: str | os.PathLike,
                        cfg: FewShotConfig) -> dict[str, Any]:
    """:func:`evaluate_frozen` on two embeddings dirs: the collection and the test images."""
    return evaluate_frozen(*load_labeled_pair(train_emb, test_emb), cfg)
