"""Near-duplicate groups and de-duplicated results against numpy brute force."""

import json

import numpy as np
import pytest

from hebbret.cli import main
from hebbret.dedup import components, drop_duplicate_hits, near_duplicates, search_distinct
from hebbret.index import build_index, load_index, search_loaded

from .test_index import write_embeddings


def brute_groups(x: np.ndarray, threshold: float, neighbours: int = 2) -> list[list[int]]:
    """Connected components (≥ 2 rows) of cosine > threshold between mutual ``neighbours``
    nearest rows, by depth-first search."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = xn @ xn.T
    np.fill_diagonal(sims, -np.inf)
    near = np.zeros_like(sims, dtype=bool)
    np.put_along_axis(near, np.argsort(-sims, axis=1)[:, :neighbours], True, axis=1)
    adj = (sims > threshold) & near & near.T
    seen, groups = set(), []
    for start in range(len(x)):
        if start in seen or not adj[start].any():
            continue
        stack, group = [start], set()
        while stack:
            r = stack.pop()
            if r not in group:
                group.add(r)
                stack += np.flatnonzero(adj[r]).tolist()
        seen |= group
        groups.append(sorted(group))
    return sorted(groups, key=lambda g: (-len(g), g[0]))


@pytest.fixture
def with_copies(tmp_path):
    """400 random rows, 30 of them copied with small noise, and one chain a - b - c whose ends
    are not similar enough by themselves (only the chain joins them)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 32)).astype(np.float32)
    copies = x[:30] + 0.05 * rng.normal(size=(30, 32)).astype(np.float32)
    step = rng.normal(size=32).astype(np.float32)
    step *= 0.25 * np.linalg.norm(x[50]) / np.linalg.norm(step)
    chain = np.stack([x[50] + step, x[50] + 2 * step])
    x = np.concatenate([x, copies, chain])
    return write_embeddings(tmp_path / "emb", x), x


def test_a_crowd_does_not_chain_into_one_group(tmp_path):
    """A hub with six near rows around it: only mutual nearest neighbours join, so the hub
    takes the two closest, not the crowd."""
    rng = np.random.default_rng(1)
    hub = rng.normal(size=32).astype(np.float32)
    spokes = [hub + s * rng.normal(size=32).astype(np.float32) for s in
              (0.05, 0.06, 0.3, 0.3, 0.3, 0.3)]
    x = np.concatenate([hub[None], np.stack(spokes), rng.normal(size=(50, 32)).astype(np.float32)])
    idx = build_index(write_embeddings(tmp_path / "emb", x), tmp_path / "idx")
    groups = [g["rows"] for g in near_duplicates(idx, 0.5, quiet=True)["groups"]]
    assert groups == brute_groups(x, 0.5) and groups[0] == [0, 1, 2]
    assert brute_groups(x, 0.5, neighbours=8)[0] == [0, 1, 2, 3, 4, 5, 6]  # what a range would
    assert not any(r in g for g in groups for r in (3, 4, 5, 6))


def test_components_join_transitively():
    src, dst = np.array([0, 2, 5, 6]), np.array([1, 3, 6, 2])
    label = components(8, src, dst)
    assert label.tolist() == [0, 0, 2, 2, 4, 2, 2, 7]


@pytest.mark.parametrize("factory,extra", [("Flat", {}), ("IVF4,Flat", {"nprobe": 4}),
                                           ("IVF4,Flat", {"nprobe": 4, "on_disk": True}),
                                           ("HNSW16", {})])
def test_groups_equal_brute_force(with_copies, tmp_path, factory, extra):
    emb, x = with_copies
    idx = build_index(emb, tmp_path / "idx", factory=factory, **extra)
    threshold = 0.95
    found = near_duplicates(idx, threshold, chunk=100, quiet=True)
    expected = brute_groups(x, threshold)
    assert len(expected) == 31  # the 30 copied rows with their copies, and the chain
    assert [g["rows"] for g in found["groups"]] == expected
    assert [50, 430, 431] in expected
    assert found["groups"][0]["paths"] == [f"img{r}.png" for r in expected[0]]


def test_groups_follow_a_pca_with_l2norm(with_copies, tmp_path):
    emb, x = with_copies
    idx = build_index(emb, tmp_path / "idx", factory="PCA32,L2norm,Flat")
    found = near_duplicates(idx, 0.95, quiet=True)  # a full-rank rotation keeps the cosines
    assert [g["rows"] for g in found["groups"]] == brute_groups(x, 0.95)


def test_dedup_needs_a_similarity_index(with_copies, tmp_path):
    emb, _ = with_copies
    idx = build_index(emb, tmp_path / "idx", metric="l2")
    with pytest.raises(ValueError, match="--metric ip"):
        near_duplicates(idx, quiet=True)


def test_distinct_hits_drop_copies_of_better_hits(with_copies, tmp_path):
    emb, x = with_copies
    loaded = load_index(build_index(emb, tmp_path / "idx"))
    queries = x[[0, 1, 50, 200]] + 0.01
    plain = search_loaded(loaded, queries, 5)[1]
    scores, ids, _, _ = search_distinct(loaded, queries, 5, 0.95)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    for q in range(len(queries)):
        kept = ids[q][ids[q] >= 0]
        assert len(kept) == 5 and len(set(kept.tolist())) == 5
        sims = xn[kept] @ xn[kept].T
        assert (sims[~np.eye(5, dtype=bool)] <= 0.95).all()  # no two kept hits are copies
        assert kept[0] == plain[q][0]
        assert (np.diff(scores[q]) <= 1e-6).all()
    assert 400 in plain[0] and 400 not in ids[0]  # row 0's copy was a hit, now dropped
    s, i = drop_duplicate_hits(loaded[0], scores[:1], ids[:1], 3, 0.95)
    assert i.shape == (1, 3) and i[0].tolist() == ids[0][:3].tolist()


def test_cli_dedup_and_search_dedup(with_copies, tmp_path, capsys, caplog):
    emb, x = with_copies
    idx = build_index(emb, tmp_path / "idx")
    out = tmp_path / "groups.json"
    assert main(["dedup", str(idx), "--threshold", "0.95", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["threshold"] == 0.95 and len(doc["groups"]) == 31
    assert "31 groups of near-duplicates" in capsys.readouterr().out
    np.save(tmp_path / "q.npy", x[:1])
    assert main(["search", str(idx), "--embeddings", str(tmp_path / "q.npy"), "--k", "3",
                 "--dedup", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)[0]["results"]
    assert [h["row"] for h in hits][0] == 0 and 400 not in [h["row"] for h in hits]
    l2 = build_index(emb, tmp_path / "l2", metric="l2")
    assert main(["dedup", str(l2)]) == 2
    assert "--metric ip" in caplog.text
