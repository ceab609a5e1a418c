"""An index chosen for a memory / recall / latency budget, checked on the whole collection."""

import numpy as np
import pytest

from hebbret.budget import choose_index, lists_for, parse_size
from hebbret.cli import main
from hebbret.index import load_index

from .test_index import write_embeddings


@pytest.fixture
def collection(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(30, 16))
    x = (centers[rng.integers(0, 30, 4000)] + 0.4 * rng.normal(size=(4000, 16))).astype(np.float32)
    return write_embeddings(tmp_path / "emb", x), x


def brute_recall(index, x, rows, k=10):
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    truth = np.argsort(-(xn[rows] @ xn.T), axis=1)[:, :k]
    found = index.search(xn[rows], k)[1]
    return np.mean([len(np.intersect1d(f, t)) / k for f, t in zip(found, truth, strict=True)])


def test_the_smallest_index_that_fits_is_chosen(collection):
    _, x = collection
    choice = choose_index(x, max_memory=200_000, target_recall=0.9)
    chosen = choice["chosen"]
    assert chosen["recall_at_10"] >= 0.9 and chosen["memory_bytes"] <= 200_000
    assert chosen["memory_bytes"] < 4000 * 16 * 4  # smaller than the Flat index it had to beat
    fits = [m for m in choice["measured"] if m["recall_at_10"] >= 0.9
            and m["memory_bytes"] <= 200_000]
    assert min(m["memory_bytes"] for m in fits) == chosen["memory_bytes"]
    assert choice["factory"].startswith(f"IVF{lists_for(4000)},")


def test_an_impossible_budget_names_the_closest_miss(collection):
    _, x = collection
    with pytest.raises(ValueError, match="no index reaches recall@10 0.999 within 1000 bytes"):
        choose_index(x, max_memory=1000, target_recall=0.999)


def test_cli_builds_the_choice_and_records_its_measurements(collection, tmp_path, caplog):
    emb, x = collection
    out = tmp_path / "idx"
    assert main(["index", "build", str(emb), "--out", str(out), "--max-memory", "200K",
                 "--target-recall", "0.9"]) == 0
    index, _, meta = load_index(out)
    assert meta["factory"] == meta["budget"]["factory"]
    assert meta["search_params"]["nprobe"] == meta["budget"]["nprobe"]
    assert meta["budget"]["chosen"] in meta["budget"]["measured"]  # every measurement kept
    rows = np.random.default_rng(1).permutation(4000)[:200]
    assert brute_recall(index, x, rows) >= 0.85  # the sample's promise holds on the whole
    assert main(["index", "build", str(emb), "--out", str(tmp_path / "x"), "--factory", "Flat",
                 "--max-memory", "1G"]) == 2
    assert "exclude each other" in caplog.text


def test_sizes_parse():
    assert parse_size("2G") == 2 << 30 and parse_size("512M") == 512 << 20
    assert parse_size("1.5GiB") == int(1.5 * (1 << 30)) and parse_size("300000") == 300000
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")


def test_codes_are_judged_where_the_collection_is_dense():
    """Near-copies: 40 per base vector in the collection, about 7 in a 2,000-row sample. SQ8
    looks fine on the sample; built over the whole collection it is not, and the choice knows."""
    import faiss

    rng = np.random.default_rng(0)
    base = rng.normal(size=(300, 16)).astype(np.float32)
    x = base[rng.integers(0, 300, 12000)] + 0.05 * rng.standard_normal((12000, 16),
                                                                        dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    with pytest.raises(ValueError, match="no index reaches recall@10 0.6"):
        choose_index(x, max_memory=300_000, target_recall=0.6, sample=2000, queries=50)
    measured = choose_index(x, target_recall=0.6, sample=2000, queries=50)["measured"]
    sq8 = max((m for m in measured if m["factory"].endswith("SQ8")), key=lambda m: m["nprobe"])
    assert sq8["sample_recall_at_10"] > 0.9 and sq8["code_recall_at_10"] < 0.6
    assert sq8["recall_at_10"] == pytest.approx(sq8["sample_recall_at_10"] * sq8["code_recall_at_10"])
    whole = faiss.index_factory(16, sq8["factory"], faiss.METRIC_INNER_PRODUCT)
    whole.train(x)
    whole.add(x)
    faiss.extract_index_ivf(whole).nprobe = sq8["nprobe"]
    assert brute_recall(whole, x, np.arange(0, 12000, 240)) < 0.6  # refusing it was right
