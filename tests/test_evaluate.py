"""Metrics against small hand-computed examples."""

import numpy as np
import pytest
import torch

from hebbret.data import held_out
from hebbret.eval import fit_logreg, knn_classify, linear_probe, retrieval_metrics, softhebb_readout


def on_circle(degrees):
    """Unit vectors at the given angles: cosine similarity to [1, 0] is cos(angle)."""
    a = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


def test_average_precision_of_a_known_ranking():
    db = on_circle([10, 20, 30, 40, 50])  # ranked in this order for a query at 0°
    db_labels = np.array([1, 0, 1, 0, 1])
    r = retrieval_metrics(db * 3.0, db_labels, on_circle([0]), np.array([1]), ks=[1, 3])
    # relevant at ranks 1, 3, 5 of 5: AP = (1/1 + 2/3 + 3/5) / 3
    assert r["mAP"] == pytest.approx(100 * (1 + 2 / 3 + 3 / 5) / 3, rel=1e-5)
    assert r["mAP@k"][3] == pytest.approx(100 * (1 + 2 / 3) / 3, rel=1e-5)  # normaliser min(R,k)=3
    assert r["P@k"][1] == pytest.approx(100.0) and r["P@k"][3] == pytest.approx(100 * 2 / 3)
    assert r["Recall@k"][1] == pytest.approx(100.0)
    assert r["normalizers"]["mAP@k"] == "min(R, k)"
    # R = 3 relevant: mAP@1 divides by min(3, 1) = 1, mAP@5 by min(3, 5) = 3
    r = retrieval_metrics(db, db_labels, on_circle([0]), np.array([1]), ks=[1, 5])
    assert r["mAP@k"][1] == pytest.approx(100.0)
    assert r["mAP@k"][5] == pytest.approx(100 * (1 + 2 / 3 + 3 / 5) / 3, rel=1e-5)
    # R = 2 (label 0: ranks 2 and 4), k = 3: (1/2) / min(2, 3)
    r = retrieval_metrics(db, db_labels, on_circle([0]), np.array([0]), ks=[3])
    assert r["mAP@k"][3] == pytest.approx(100 * (1 / 2) / 2, rel=1e-5)


def test_query_never_matches_itself():
    feats = on_circle([10, 20, 30, 40, 50])
    labels = np.array([1, 0, 1, 0, 1])
    # query = database row 0 (10°): others rank 20°(0), 30°(1), 40°(0), 50°(1) -> relevant 2 and 4
    r = retrieval_metrics(feats, labels, feats[:1], labels[:1], ks=[1, 2], query_db_rows=[0])
    assert r["mAP"] == pytest.approx(100 * (1 / 2 + 2 / 4) / 2, rel=1e-5)
    assert r["P@k"][1] == 0.0 and r["P@k"][2] == pytest.approx(50.0)
    assert r["self_match_excluded"]
    without = retrieval_metrics(feats, labels, feats[:1], labels[:1], ks=[1])
    assert without["P@k"][1] == 100.0  # counting itself would make rank 1 a hit


def test_queries_without_relevant_items_are_left_out_and_counted():
    r = retrieval_metrics(on_circle([0, 90]), np.array([0, 0]), on_circle([5, 50]),
                          np.array([0, 1]), ks=[1])
    assert r["queries_counted"] == 1 and r["queries_without_relevant"] == 1
    assert r["mAP"] == pytest.approx(100.0)


def test_knn_weighted_vote_with_known_weights():
    train = on_circle([0, 60, 30])  # cos to the query: 1, 0.5, 0.866
    train_labels = np.array([0, 1, 1])
    r = knn_classify(train, train_labels, on_circle([0]), np.array([1]), ks=[1, 3, 50],
                     temperature=1.0)
    # k=1: only class 0 votes. k=3: class 1 gets e^0.5 + e^0.866 = 4.03 > e^1 = 2.72 for class 0
    assert r["k"][1]["top1"] == 0.0 and r["k"][3]["top1"] == 100.0
    assert set(r["k"]) == {1, 3}  # k = 50 is capped at the 3 train items
    assert r["k"][1]["top5"] == 100.0 and r["num_classes"] == 2
    # with a low temperature the single closest item outweighs the two others
    cold = knn_classify(train, train_labels, on_circle([0]), np.array([1]), ks=[3], temperature=0.1)
    assert cold["k"][3]["top1"] == 0.0


def test_knn_vote_does_not_overflow_at_tiny_temperatures():
    train = on_circle([0, 2, 3])
    r = knn_classify(train, np.array([0, 1, 1]), on_circle([0]), np.array([1]), ks=[3],
                     temperature=0.001)
    assert r["k"][3]["top1"] == 0.0  # exp(1/0.001) overflows unless the vote is shifted


def test_knn_excludes_the_query_from_its_own_neighbours():
    feats = on_circle([0, 1, 90, 91])
    labels = np.array([0, 0, 1, 1])
    r = knn_classify(feats, labels, feats, labels, ks=[1], query_db_rows=np.arange(4))
    assert r["k"][1]["top1"] == 100.0 and r["self_match_excluded"]
    alternating = np.array([0, 1, 0, 1])  # each item's nearest other item has the other label
    r = knn_classify(feats, alternating, feats, alternating, ks=[1], query_db_rows=np.arange(4))
    assert r["k"][1]["top1"] == 0.0
    assert knn_classify(feats, alternating, feats, alternating, ks=[1])["k"][1]["top1"] == 100.0


def test_chunked_scores_equal_one_block():
    rng = np.random.default_rng(0)
    db, q = rng.normal(size=(300, 64)).astype(np.float32), rng.normal(size=(50, 64)).astype(np.float32)
    dl, ql = rng.integers(0, 4, 300), rng.integers(0, 4, 50)
    big = retrieval_metrics(db, dl, q, ql, ks=[5, 50])
    small = retrieval_metrics(db, dl, q, ql, ks=[5, 50], memory_mb=0, sort_block=7)
    assert big["mAP"] == pytest.approx(small["mAP"], rel=1e-5)
    assert big["P@k"] == pytest.approx(small["P@k"], rel=1e-5)
    k1 = knn_classify(db, dl, q, ql, ks=[5])
    k2 = knn_classify(db, dl, q, ql, ks=[5], memory_mb=0)
    assert k1["k"] == k2["k"]


def test_linear_probe_picks_regularisation_on_validation_and_learns():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 20)) * 2
    y = rng.integers(0, 3, 600)
    x = (centers[y] + rng.normal(size=(600, 20))).astype(np.float32)
    r = linear_probe(x[:500], y[:500], x[500:], y[500:], penalties=(0.0, 1.0))
    assert r["top1"] > 90.0
    assert set(r["val_top1"]) == {0.0, 1.0}
    best = max(r["val_top1"].values())  # ties go to the smaller penalty
    assert r["penalty"] == min(p for p, v in r["val_top1"].items() if v == best)
    assert r["val_size"] == int(held_out(y[:500], 0.1).sum())


def test_fit_logreg_reaches_the_optimum_in_one_piece_or_in_chunks():
    """The L-BFGS solution zeroes the objective's gradient, whether the loss is summed over all
    rows at once or chunk by chunk (the path for features too large to hold)."""
    rng = np.random.default_rng(1)
    y = torch.from_numpy(rng.integers(0, 3, 300))
    x = torch.from_numpy((rng.normal(size=(3, 16))[y] * 2 + rng.normal(size=(300, 16)))
                         .astype(np.float32))
    whole = fit_logreg(x, y, 3, penalty=1e-2)
    chunked = fit_logreg(x, y, 3, penalty=1e-2, chunk=64)
    for head in (whole, chunked):
        loss = (torch.nn.functional.cross_entropy(head(x), y)
                + 1e-2 * head.weight.pow(2).sum())
        grads = torch.autograd.grad(loss, [head.weight, head.bias])
        assert max(float(g.abs().max()) for g in grads) < 1e-4
    assert torch.allclose(whole.weight, chunked.weight, atol=1e-3)


def test_linear_probe_recomputes_features_that_do_not_fit_in_memory():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    x = (rng.normal(size=(3, 16))[y] * 2 + rng.normal(size=(300, 16))).astype(np.float32)
    held = linear_probe(x[:250], y[:250], x[250:], y[250:], penalties=(1e-3,))
    recomputed = linear_probe(x[:250], y[:250], x[250:], y[250:], penalties=(1e-3,),
                              memory_mb=0)
    assert held["top1"] == recomputed["top1"] and held["top1"] > 80.0


def test_bad_arguments_are_explained():
    x, y = on_circle([0, 10]), np.array([0, 1])
    with pytest.raises(ValueError, match="k must be positive"):
        knn_classify(x, y, x, y, ks=[0])
    with pytest.raises(ValueError, match="2 feature rows but 3 labels"):
        knn_classify(x, np.array([0, 1, 1]), x, y)
    with pytest.raises(ValueError, match="query dimension 3 != database dimension 2"):
        retrieval_metrics(x, y, np.ones((1, 3), np.float32), np.array([0]))
    with pytest.raises(ValueError, match="unlabeled"):
        knn_classify(x, np.array([-1, -1]), x, y)


def test_labels_of_differently_numbered_folders_are_aligned_by_class_name():
    from hebbret.eval import aligned_labels

    items = [{"label": 0}, {"label": 1}, {"label": 0}]
    # test folder has classes (cat, dog); train had (ant, cat, dog)
    assert aligned_labels(items, ["cat", "dog"], ["ant", "cat", "dog"], "t").tolist() == [1, 2, 1]
    with pytest.raises(ValueError, match=r"classes \['emu'\]"):
        aligned_labels(items, ["cat", "emu"], ["ant", "cat", "dog"], "t")


def test_softhebb_readout_learns_raw_features_and_is_seeded():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 700)
    x = np.abs(rng.normal(size=(4, 64))[y] * 3 + rng.normal(size=(700, 64))).astype(np.float16)
    for init_scale in (0.1105, None):  # SoftHebb's demo init; nn.Linear's default
        a = softhebb_readout(x[:600], y[:600], x[600:], y[600:], epochs=12, init_scale=init_scale)
        b = softhebb_readout(x[:600], y[:600], x[600:], y[600:], epochs=12, init_scale=init_scale)
        assert a["top1"] > 90.0 and a["top1"] == b["top1"]
    assert a["top5"] == 100.0  # 4 classes: always within the top 5
    assert a["lr_halved_at"] == [10, 17, 25, 30, 35, 40, 45] and a["dropout"] == 0.5
    with pytest.raises(ValueError, match="dimension"):
        softhebb_readout(x[:600], y[:600], x[600:, :10], y[600:], epochs=1)
