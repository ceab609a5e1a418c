import json

import numpy as np
import pytest
import torch

from hebbret import cli
from hebbret.config import FewShotConfig
from hebbret.data import few_label_rows
from hebbret.eval.features import collection_stats, prepare
from hebbret.eval.fewshot import evaluate_frozen, fewshot_knn
from hebbret.eval.logreg import fewshot_linear, fit_logreg
from hebbret.eval.propagate import knn_graph, propagate_labels
from hebbret.pretraining import pretrain

from .conftest import TINY_C3, write_image_folder


def blobs(n_per_class: int, classes: int = 3, dim: int = 16, spread: float = 0.3, seed: int = 0):
    """Gaussian clusters around unit centres (the same for every seed): (N, dim) float32,
    labels (N,)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1000 + dim).normal(size=(classes, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.repeat(np.arange(classes), n_per_class)
    x = centres[y] + spread * rng.normal(size=(len(y), dim)) / np.sqrt(dim)
    return x.astype(np.float32), y


def test_knn_graph_matches_brute_force_and_excludes_self():
    x, _ = blobs(20, seed=1)
    sims, nbrs = knn_graph(x, 5)
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = z @ z.T
    np.fill_diagonal(cos, -np.inf)
    want = np.argsort(-cos, axis=1)[:, :5]
    assert (nbrs != np.arange(len(x))[:, None]).all()
    np.testing.assert_array_equal(np.sort(nbrs, 1), np.sort(want, 1))
    np.testing.assert_allclose(sims, np.take_along_axis(cos, nbrs, 1), atol=1e-5)


def test_graph_index_factory_searches_through_faiss_pca():
    # 3 clusters in 64-d: PCA to 8 keeps the cluster structure, so the propagated labels agree
    x, y = blobs(30, dim=64, seed=3)
    test_x, test_y = blobs(10, dim=64, seed=4)
    flat = FewShotConfig(protocols=["propagate"], labels_per_class=2, seeds=[0], graph_k=5,
                         standardize=False)
    pca = FewShotConfig(protocols=["propagate"], labels_per_class=2, seeds=[0], graph_k=5,
                        standardize=False, graph_index="PCA8,Flat")
    a = evaluate_frozen(x, y, test_x, test_y, flat)["propagate"]["seeds"][0]
    b = evaluate_frozen(x, y, test_x, test_y, pca)["propagate"]["seeds"][0]
    assert a["top1"] == b["top1"] == 100.0
    with pytest.raises(ValueError, match="PCA to 999 dimensions"):
        evaluate_frozen(x, y, test_x, test_y, FewShotConfig(
            protocols=["propagate"], labels_per_class=2, seeds=[0], graph_index="PCA999,Flat"))


def test_propagation_solves_the_diffusion_exactly():
    x, y = blobs(15, seed=2)
    rows = few_label_rows(y, 2, seed=0)
    graph = knn_graph(x, 6)
    prop = propagate_labels(graph, y, rows, alpha=0.9, gamma=3.0, iters=200)
    # dense reference: Z = (I − αS)⁻¹ Y
    n = len(x)
    a = np.zeros((n, n))
    for i in range(n):
        a[i, graph[1][i]] = np.clip(graph[0][i], 0, None) ** 3
    w = a + a.T
    d = w.sum(1)
    s = w / np.sqrt(np.outer(d, d))
    b = np.zeros((n, 3))
    b[rows, y[rows]] = 1 / 2
    z = np.clip(np.linalg.solve(np.eye(n) - 0.9 * s, b), 0, None)
    np.testing.assert_allclose(prop.scores, z, rtol=1e-3, atol=1e-5)
    assert (prop.pseudo_labels == y).all()  # well-separated clusters: every label recovered
    assert (prop.certainty[rows] == 1).all() and prop.certainty.min() > 0


def test_knn_protocol_votes_only_with_the_labeled_items():
    x, y = blobs(10, seed=3)
    test_x, test_y = blobs(5, seed=4)
    rows = few_label_rows(y, 3, seed=0)
    poisoned = x.copy()
    unlabeled = np.setdiff1d(np.arange(len(x)), rows)
    poisoned[unlabeled] = test_x[np.arange(len(unlabeled)) % len(test_x)]  # exact test copies
    a = fewshot_knn(x, y, rows, test_x, test_y, k=5)
    wrong = np.where(np.isin(np.arange(len(y)), rows), y, (y + 1) % 3)  # unlabeled: wrong labels
    b = fewshot_knn(poisoned, wrong, rows, test_x, test_y, k=5)
    assert a["top1"] == b["top1"] == 100.0


def test_linear_in_the_span_of_the_labeled_rows_equals_the_full_fit():
    x, y = blobs(8, dim=64, spread=1.0, seed=5)
    stats = collection_stats(x)
    z = prepare(x, "l2+standardize", stats)
    q = torch.linalg.qr(z.T.double()).Q.float()
    full = fit_logreg(z, torch.from_numpy(y), 3, 1e-2, max_iter=500)
    small = fit_logreg(z @ q, torch.from_numpy(y), 3, 1e-2, max_iter=500)
    with torch.no_grad():
        torch.testing.assert_close(full(z), small(z @ q), atol=2e-3, rtol=1e-3)


def test_linear_choices_never_look_at_the_test_labels():
    x, y = blobs(12, dim=32, spread=1.5, seed=6)
    test_x, test_y = blobs(6, dim=32, spread=1.5, seed=7)
    rows = few_label_rows(y, 4, seed=1)
    a = fewshot_linear(x, y, rows, test_x, test_y, seed=1)
    b = fewshot_linear(x, y, rows, test_x, (test_y + 1) % 3, seed=1)
    assert (a["preprocessing"], a["penalty"], a["cv_top1"]) == (b["preprocessing"], b["penalty"],
                                                                b["cv_top1"])
    assert a["cv_folds"] == 4 and a["top1"] > 60


def test_every_frozen_protocol_and_seed_is_reported():
    x, y = blobs(20, seed=8)
    test_x, test_y = blobs(10, seed=9)
    cfg = FewShotConfig(labels_per_class=2, seeds=[0, 1, 2], graph_k=5)
    res = evaluate_frozen(x, y, test_x, test_y, cfg)
    assert set(res) == {"knn", "linear", "propagate"}
    for protocol in res.values():
        assert list(protocol["seeds"]) == [0, 1, 2] and protocol["top1"]["n"] == 3
        assert all(r["labeled"] == 6 for r in protocol["seeds"].values())
    assert res["propagate"]["top1"]["mean"] > 90  # clusters this clear propagate cleanly


def test_config_rejects_unknown_protocols_and_ambiguous_budgets():
    with pytest.raises(ValueError, match="unknown few-label protocols"):
        FewShotConfig(protocols=["knn", "magic"], labels_per_class=1)
    with pytest.raises(ValueError, match="exactly one"):
        FewShotConfig(labels_per_class=1, label_fraction=0.1)


def test_fewshot_cli_runs_every_protocol_on_real_images(tmp_path, capsys):
    write_image_folder(tmp_path / "train", classes=3, per_class=8, seed=0)
    write_image_folder(tmp_path / "test", classes=3, per_class=3, seed=1)
    run = pretrain(str(tmp_path / "train"), out=str(tmp_path / "run"), model_kwargs=TINY_C3,
                   img_size=16, batch_size=6, epochs=1, quiet=True)
    out = tmp_path / "fs"
    assert cli.main(["fewshot", str(run), str(tmp_path / "train"), str(tmp_path / "test"),
                     "--labels-per-class", "2", "--seeds", "0", "1", "--epochs", "1",
                     "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "fewshot.json").read_text())
    assert set(result["protocols"]) == {"knn", "linear", "propagate", "full"}
    for protocol in result["protocols"].values():
        assert protocol["top1"]["n"] == 2
    assert "| propagate |" in capsys.readouterr().out
    # full fine-tunes on exactly the subset the frozen protocols label for the same seed
    ft = [json.loads(line)["row"]
          for line in (out / "full-seed1" / "labeled_items.jsonl").read_text().splitlines()]
    labels = np.repeat(np.arange(3), 8)
    assert ft == few_label_rows(labels, 2, seed=1).tolist()


def test_knn_through_a_flat_faiss_index_equals_the_exact_vote():
    import faiss

    from hebbret.eval import knn_classify

    x, y = blobs(30, dim=24, spread=1.5, seed=5)
    test_x, test_y = blobs(10, dim=24, spread=1.5, seed=6)
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(24)
    index.add(z)
    w = np.random.default_rng(0).uniform(0.2, 1, len(x)).astype(np.float32)
    exact = knn_classify(x, y, test_x, test_y, ks=[1, 7], train_weights=w)
    searched = knn_classify(x, y, test_x, test_y, ks=[1, 7], train_weights=w, index=index)
    assert exact["k"] == searched["k"] and exact["k"][7]["top1"] < 100  # not trivially separable
    own = np.arange(10)  # the queries are the first train rows: never their own vote
    a = knn_classify(x, y, x[:10], y[:10], ks=[5], query_db_rows=own)
    b = knn_classify(x, y, x[:10], y[:10], ks=[5], query_db_rows=own, index=index)
    assert a["k"] == b["k"]


def test_diffusion_is_chosen_on_the_labeled_rows_only():
    from hebbret.eval.propagate import PRIOR_WEIGHTS, PROPAGATION_ALPHAS, choose_diffusion

    x, y = blobs(25, dim=16, spread=2.0, seed=7)
    rows = few_label_rows(y, 5, seed=0)
    graph = knn_graph(x, 6)

    def prior(fit):  # a stand-in classifier: each class's mean of the fold's labeled rows
        centres = np.stack([x[fit][y[fit] == c].mean(0) for c in range(3)])
        return torch.softmax(torch.from_numpy(x @ centres.T), 1)

    alpha, weight, scores = choose_diffusion(graph, y, rows, prior=prior)
    assert alpha in PROPAGATION_ALPHAS and weight in PRIOR_WEIGHTS
    assert len(scores) == len(PROPAGATION_ALPHAS) * len(PRIOR_WEIGHTS)
    hidden = np.full_like(y, -1)
    hidden[rows] = y[rows]  # the unlabeled rows' labels are never looked at
    assert choose_diffusion(graph, hidden, rows, prior=prior) == (alpha, weight, scores)
    test_x, test_y = blobs(10, dim=16, spread=2.0, seed=8)
    cfg = FewShotConfig(protocols=["propagate"], labels_per_class=5, seeds=[0], graph_k=6)
    r = evaluate_frozen(x, y, test_x, test_y, cfg)["propagate"]["seeds"][0]
    b = evaluate_frozen(x, y, test_x, (test_y + 1) % 3, cfg)["propagate"]["seeds"][0]
    assert (r["alpha"], r["prior_weight"], r["cv_top1"]) == (b["alpha"], b["prior_weight"],
                                                             b["cv_top1"])


def test_propagation_with_a_prior_solves_the_diffusion_exactly():
    x, y = blobs(15, seed=2)
    rows = few_label_rows(y, 2, seed=0)
    graph = knn_graph(x, 6)
    prior = torch.softmax(torch.from_numpy(np.random.default_rng(0).normal(size=(len(x), 3))), 1)
    prop = propagate_labels(graph, y, rows, alpha=0.8, gamma=3.0, iters=200, prior=0.5 * prior)
    a = np.zeros((len(x), len(x)))
    for i in range(len(x)):
        a[i, graph[1][i]] = np.clip(graph[0][i], 0, None) ** 3
    w = a + a.T
    s = w / np.sqrt(np.outer(w.sum(1), w.sum(1)))
    b = 0.5 * prior.numpy()
    b[rows] = np.eye(3)[y[rows]]
    z = np.clip(np.linalg.solve(np.eye(len(x)) - 0.8 * s, b), 0, None)
    np.testing.assert_allclose(prop.scores, z, rtol=1e-3, atol=1e-5)


def two_moons(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved half circles (+ a constant third coordinate, so cosine neighbours are
    the plane's neighbours): not linearly separable, but each moon is one connected curve."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, np.pi, n)
    y = np.repeat([0, 1], n // 2)
    xy = np.where(y[:, None] == 0, np.c_[np.cos(t), np.sin(t)],
                  np.c_[1 - np.cos(t), 0.5 - np.sin(t)]) + 0.08 * rng.normal(size=(n, 2))
    return np.c_[xy, np.full(n, 4.0)].astype(np.float32), y


def test_propagation_follows_the_collection_where_a_linear_head_cannot():
    x, y = two_moons(400, 0)
    test_x, test_y = two_moons(200, 1)
    cfg = FewShotConfig(labels_per_class=5, seeds=[0, 1, 2], graph_k=8)
    res = evaluate_frozen(x, y, test_x, test_y, cfg)
    assert res["linear"]["top1"]["mean"] < 90
    assert res["propagate"]["top1"]["mean"] > res["linear"]["top1"]["mean"] + 10
    assert res["propagate"]["top1"]["mean"] > res["knn"]["top1"]["mean"]
