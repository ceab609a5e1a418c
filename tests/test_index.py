"""FAISS indexes against numpy brute force, and their error paths."""

import json
import logging

import numpy as np
import pytest
from numpy.lib.format import open_memmap

from hebbret._io import write_json, write_jsonl
from hebbret.embed import load_embeddings
from hebbret.index import build_index, index_info, load_index, search_index


def write_embeddings(path, x, labels=None):
    path.mkdir(parents=True, exist_ok=True)
    np.save(path / "embeddings.npy", x)
    labels = labels if labels is not None else np.zeros(len(x), int)
    write_jsonl(path / "items.jsonl", [{"path": f"img{i}.png", "label": int(c), "class_name": str(c)}
                                       for i, c in enumerate(labels)])
    write_json(path / "meta.json", {"model_sha256": "abc", "layer": "features", "pool": "flatten",
                                    "data_root": str(path)})
    return path


@pytest.fixture
def clustered(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(16, 24))
    labels = rng.integers(0, 16, 1500)
    x = (centers[labels] + 0.3 * rng.normal(size=(1500, 24))).astype(np.float32)
    return write_embeddings(tmp_path / "emb", x, labels), x


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_flat_search_equals_numpy_brute_force(clustered, tmp_path, metric):
    emb_dir, x = clustered
    out = build_index(emb_dir, tmp_path / "idx", metric=metric)
    q = np.random.default_rng(1).normal(size=(20, 24)).astype(np.float32)
    scores, ids, items, meta = search_index(out, q, k=7)
    if metric == "ip":
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        brute = qn @ xn.T
        expected = np.argsort(-brute, axis=1)[:, :7]
        np.testing.assert_allclose(scores, np.take_along_axis(brute, expected, 1), rtol=1e-4)
    else:
        dist = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
        expected = np.argsort(dist, axis=1)[:, :7]
        np.testing.assert_allclose(scores, np.take_along_axis(dist, expected, 1), rtol=1e-3)
    np.testing.assert_array_equal(ids, expected)
    assert meta["normalization"] == ("l2" if metric == "ip" else "none")
    assert len(items) == len(x) and items[ids[0, 0]]["path"] == f"img{ids[0, 0]}.png"


def test_ivf_reports_recall_against_flat_and_nprobe_is_overridable(clustered, tmp_path):
    emb_dir, x = clustered
    out = build_index(emb_dir, tmp_path / "ivf", factory="IVF16,Flat", nprobe=1)
    info = index_info(out)
    assert info["search_params"] == {"nprobe": 1}
    assert 0.0 < info["recall_at_10_vs_flat"] <= 1.0
    flat = build_index(emb_dir, tmp_path / "flat")
    q = x[:30] + 0.05
    _, exact, _, _ = search_index(flat, q, k=10)
    _, approx_all, _, _ = search_index(out, q, k=10, nprobe=16)  # every list: exact again
    np.testing.assert_array_equal(approx_all, exact)


def test_hnsw_search_param_is_recorded(clustered, tmp_path):
    emb_dir, _ = clustered
    out = build_index(emb_dir, tmp_path / "hnsw", factory="HNSW16", ef_search=48)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["search_params"] == {"efSearch": 48} and meta["recall_at_10_vs_flat"] > 0.5


def test_too_few_vectors_for_centroids(tmp_path, caplog):
    x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    emb = write_embeddings(tmp_path / "emb", x)
    with pytest.raises(ValueError, match="must learn 64 centroids but .* has only 50 vectors"):
        build_index(emb, tmp_path / "idx", factory="IVF64,Flat")
    with caplog.at_level(logging.WARNING, logger="hebbret.index"):
        build_index(emb, tmp_path / "idx", factory="IVF4,Flat")
    assert "fewer than 39 per centroid" in caplog.text


def test_k_larger_than_the_index_returns_what_exists(clustered, tmp_path):
    x = np.eye(3, dtype=np.float32)
    out = build_index(write_embeddings(tmp_path / "e", x), tmp_path / "i")
    scores, ids, _, _ = search_index(out, x[:1], k=10)
    assert ids.shape == (1, 3) and ids[0, 0] == 0


def test_bad_input_is_named(clustered, tmp_path):
    emb_dir, x = clustered
    out = build_index(emb_dir, tmp_path / "idx")
    with pytest.raises(ValueError, match="dimension 5 but .* holds 24-dimensional"):
        search_index(out, np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match="k must be positive"):
        search_index(out, x[:1], k=0)
    bad_q = x[:4].copy()
    bad_q[2, 0] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf in rows \[2\]"):
        search_index(out, bad_q)
    (out / "items.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="items.jsonl is missing"):
        load_index(out)
    with pytest.raises(FileNotFoundError, match="index dir not found"):
        load_index(tmp_path / "nope")


def test_embeddings_dir_validation(tmp_path):
    x = np.ones((4, 3), np.float32)
    x[1, 2] = np.inf
    x[3, 0] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf in rows \[1, 3\]"):
        load_embeddings(write_embeddings(tmp_path / "a", x))
    short = write_embeddings(tmp_path / "b", np.ones((4, 3), np.float32))
    write_jsonl(short / "items.jsonl", [{"path": "x", "label": 0}])
    with pytest.raises(ValueError, match="4 rows but items.jsonl has 1 lines"):
        load_embeddings(short)
    (short / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match="meta.json is missing"):
        load_embeddings(short)


def test_large_memmap_is_added_in_chunks(tmp_path):
    d = tmp_path / "big"
    d.mkdir()
    arr = open_memmap(d / "embeddings.npy", mode="w+", dtype=np.float16, shape=(1000, 8))
    arr[:] = np.random.default_rng(0).normal(size=(1000, 8))
    arr.flush()
    write_jsonl(d / "items.jsonl", [{"path": str(i), "label": 0} for i in range(1000)])
    write_json(d / "meta.json", {})
    out = build_index(d, tmp_path / "idx", chunk=128)
    assert index_info(out)["ntotal"] == 1000


def test_pca_fitted_in_torch_matches_faiss_and_numpy(tmp_path):
    import faiss

    from hebbret.models._base import fit_pca

    rng = np.random.default_rng(3)
    scale = 0.8 ** np.arange(48) + 0.01
    x = (rng.normal(size=(800, 48)) * scale).astype(np.float32)
    ref = faiss.PCAMatrix(48, 6)
    ref.train(x)
    emb = write_embeddings(tmp_path / "pca_emb", x)
    index, _, meta = load_index(build_index(emb, tmp_path / "pca", factory="PCA6,Flat", metric="l2"))
    ours = faiss.downcast_VectorTransform(index.chain.at(0)).apply(x[:50])
    np.testing.assert_allclose(np.abs(ours), np.abs(ref.apply(x[:50])), atol=1e-3)  # up to sign
    assert meta["recall_at_10_vs_flat"] < 1.0  # 6 of 48 dims: approximate, and measured
    # PCAW: the same components, each scaled to unit variance over the collection
    index, _, _ = load_index(build_index(emb, tmp_path / "pcaw", factory="PCAW6,Flat", metric="l2"))
    white = faiss.downcast_VectorTransform(index.chain.at(0)).apply(x)
    plain = ref.apply(x)
    np.testing.assert_allclose(white.var(0), np.ones(6), rtol=2e-2)
    np.testing.assert_allclose(np.abs(white), np.abs(plain) / plain.std(0), atol=2e-2)
    # directions the data does not fill are floored, not divided by ~0
    flat = x.copy()
    flat[:, 4:] = 0  # rank 4 of 48
    emb = write_embeddings(tmp_path / "rank4_emb", flat)
    index, _, _ = load_index(build_index(emb, tmp_path / "rank4", factory="PCAW6,Flat", metric="l2"))
    assert np.isfinite(faiss.downcast_VectorTransform(index.chain.at(0)).apply(flat)).all()
    # the randomised path (d > 4096) finds the same leading directions as an exact SVD
    wide = (rng.normal(size=(300, 5000)) * (0.7 ** np.arange(5000) + 0.001)).astype(np.float32)
    _, comps, var = fit_pca(wide, 4)
    exact = np.linalg.svd(wide - wide.mean(0), full_matrices=False)
    assert np.abs((comps * exact[2][:4]).sum(1)).min() > 0.999
    np.testing.assert_allclose(var, exact[1][:4] ** 2 / 300, rtol=1e-3)
    with pytest.raises(ValueError, match="at least 8 vectors"):
        fit_pca(x[:5], 8)


@pytest.mark.parametrize("factory", ["IVF8,Flat", "PCA8,IVF8,SQ8"])
def test_on_disk_index_answers_like_the_same_index_in_memory(clustered, tmp_path, factory):
    """Added block by block, merged with merge_ondisk, searched memory-mapped: the same
    neighbours as the in-memory index trained on the same sample."""
    import shutil

    emb_dir, x = clustered
    mem = build_index(emb_dir, tmp_path / "mem", factory=factory, nprobe=4)
    disk = build_index(emb_dir, tmp_path / "disk", factory=factory, nprobe=4, on_disk=True,
                       shard_rows=400)  # 4 blocks
    assert (disk / "index.ivfdata").is_file() and not (disk / ".build").exists()
    moved = tmp_path / "elsewhere" / "disk"  # the dir is self-contained
    shutil.move(str(disk), moved)
    q = np.random.default_rng(2).normal(size=(30, 24)).astype(np.float32)
    s_mem, i_mem, _, _ = search_index(mem, q, k=10)
    s_disk, i_disk, items, _ = search_index(moved, q, k=10)
    np.testing.assert_array_equal(i_mem, i_disk)
    np.testing.assert_allclose(s_mem, s_disk, rtol=1e-5, atol=1e-6)
    info = index_info(moved)
    assert info["on_disk"] and info["nprobe"] == 4 and info["ntotal"] == len(x) == len(items)
    assert info["size_on_disk_bytes"] > (moved / "index.ivfdata").stat().st_size > 0
    assert 0 < info["recall_at_10_vs_flat"] <= 1
    assert info["recall_at_10_vs_flat"] == index_info(mem)["recall_at_10_vs_flat"]


def test_on_disk_index_with_missing_or_truncated_lists_is_named(clustered, tmp_path):
    emb_dir, _ = clustered
    with pytest.raises(ValueError, match="needs inverted lists.*IVF"):
        build_index(emb_dir, tmp_path / "flat", factory="Flat", on_disk=True)
    out = build_index(emb_dir, tmp_path / "disk", factory="IVF8,Flat", on_disk=True)
    data = out / "index.ivfdata"
    blob = data.read_bytes()
    data.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="index.ivfdata holds .* truncated"):
        search_index(out, np.zeros((1, 24), np.float32))
    data.unlink()
    with pytest.raises(FileNotFoundError, match="inverted lists .* missing"):
        load_index(out)


@pytest.mark.parametrize("factory,on_disk", [("Flat", False), ("IVF8,Flat", False),
                                             ("IVF8,Flat", True), ("HNSW8", False)])
def test_filtered_search_equals_exact_search_over_the_subset(clustered, tmp_path, factory,
                                                             on_disk):
    """Restricted inside FAISS (IDSelectorBatch): every query gets its full k hits from the
    subset, the same as brute force over the subset (IVF visits every list here)."""
    from hebbret.search import select_rows

    emb_dir, x = clustered
    out = build_index(emb_dir, tmp_path / "idx", factory=factory, on_disk=on_disk,
                      nprobe=8 if "IVF" in factory else None,
                      ef_search=256 if "HNSW" in factory else None)
    rows = np.sort(np.random.default_rng(2).choice(len(x), 150, replace=False))
    q = np.random.default_rng(3).normal(size=(10, 24)).astype(np.float32)
    scores, ids, _, _ = search_index(out, q, k=9, rows=rows)
    xn = x[rows] / np.linalg.norm(x[rows], axis=1, keepdims=True)
    brute = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ xn.T
    expected = rows[np.argsort(-brute, axis=1)[:, :9]]
    if "HNSW" in factory:  # a graph walk: approximate, but all k hits come from the subset
        assert np.isin(ids, rows).all()
        assert np.mean([len(set(a) & set(b)) / 9 for a, b in zip(ids, expected, strict=True)]) >= 0.9
        return
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.sort(brute, axis=1)[:, ::-1][:, :9], rtol=1e-4)
    # by label and by path prefix: only those rows come back
    items = load_index(out)[1]
    by_label = select_rows(items, label="3")
    assert set(search_index(out, q, k=5, rows=by_label)[1].ravel()) <= set(by_label.tolist())
    assert select_rows(items, path_prefix="img14").tolist() == [14] + list(range(140, 150)) + \
        list(range(1400, 1500))
    assert select_rows(items) is None
    with pytest.raises(ValueError, match="not in the collection"):
        select_rows(items, rows=[0, 5000])


def test_filtered_search_reaches_the_index_under_a_pca(clustered, tmp_path):
    """An IndexPreTransform passes the selector on to its IVF: the hits equal the unfiltered
    ranking (every list visited, the index's own centred PCA space) restricted to the rows."""
    emb_dir, x = clustered
    out = build_index(emb_dir, tmp_path / "idx", factory="PCA16,IVF8,Flat", nprobe=8)
    rows = np.sort(np.random.default_rng(2).choice(len(x), 150, replace=False))
    q = np.random.default_rng(3).normal(size=(10, 24)).astype(np.float32)
    _, ids, _, _ = search_index(out, q, k=9, rows=rows)
    _, everything, _, _ = search_index(out, q, k=len(x))
    expected = np.stack([r[np.isin(r, rows)][:9] for r in everything])
    np.testing.assert_array_equal(ids, expected)


def test_search_cli_filters_by_rows_file_and_names_bad_rows(clustered, tmp_path, capsys,
                                                            caplog):
    from hebbret.cli import main

    emb_dir, x = clustered
    out = build_index(emb_dir, tmp_path / "idx")
    np.save(tmp_path / "q.npy", x[:2])
    (tmp_path / "rows.txt").write_text("7\n11, 500\n")
    assert main(["search", str(out), "--embeddings", str(tmp_path / "q.npy"), "--k", "5",
                 "--rows", str(tmp_path / "rows.txt"), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert [sorted(h["row"] for h in q["results"]) for q in found] == [[7, 11, 500]] * 2
    assert main(["search", str(out), "--embeddings", str(tmp_path / "q.npy"), "--label", "3",
                 "--json"]) == 0
    assert {h["label"] for q in json.loads(capsys.readouterr().out) for h in q["results"]} == {3}
    assert main(["search", str(out), "--embeddings", str(tmp_path / "q.npy"),
                 "--rows", "1,x"]) == 2
    assert "--rows '1,x'" in caplog.text
