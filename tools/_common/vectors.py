"""The million-vector collections of tools/bench_scale.py and tools/bench_budget.py: unit
vectors written as an embeddings dir, fresh query copies, their exact neighbours, and the
memory of the process that uses them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

from hebbret._io import write_json, write_jsonl
from hebbret.artifacts import EMBEDDINGS, ITEMS, META


def memory() -> dict[str, float]:
    """This process's peak and current resident memory in MiB (/proc/self/status)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def base_vectors(source: str) -> np.ndarray:
    """float32 (N, d): a .npy file, or an index dir's embeddings as that index sees them
    (e.g. the PCA of a ``PCA256,L2norm,Flat`` index over Hebbian features)."""
    if source.endswith(".npy"):
        return np.load(source).astype(np.float32)
    from hebbret.embed import load_embeddings
    from hebbret.index import load_index, transform_like_index

    meta = load_index(source)[2]
    return transform_like_index(source, load_embeddings(meta["embeddings"])[0])


def make_vectors(path: Path, n: int, dim: int, source: str | None, sigma: float, seed: int,
                 chunk: int = 65536) -> str:
    """An embeddings dir of ``n`` unit vectors; returns what they are."""
    rng = np.random.default_rng(seed)
    if source:
        base = base_vectors(source)
        dim = base.shape[1]
        what = f"noisy copies (σ = {sigma} per dim, L2-normalised) of the {len(base)} rows of {source}"
    else:
        base = rng.normal(size=(max(1, n // 200), dim)).astype(np.float32)
        what = f"clustered synthetic: {len(base)} Gaussian centres, σ = {sigma} per dim, L2-normalised"
    path.mkdir(parents=True, exist_ok=True)
    arr = open_memmap(path / EMBEDDINGS, mode="w+", dtype=np.float32, shape=(n, dim))
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        x = base[rng.integers(0, len(base), m)] + sigma * rng.standard_normal((m, dim),
                                                                            dtype=np.float32)
        arr[i: i + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    arr.flush()
    del arr
    write_jsonl(path / ITEMS, ({"path": f"v{i}", "label": -1} for i in range(n)))
    write_json(path / META, {"count": n, "dim": dim, "vectors": what})
    return what


def exact_neighbours(emb: Path, q: np.ndarray, k: int = 10) -> np.ndarray:
    """int64 (Q, k): the rows of the embeddings dir ``emb`` with the largest inner product
    with each query, read in blocks (exact search without holding the collection)."""
    import faiss
    from faiss.contrib.exhaustive_search import knn_ground_truth

    x = np.load(emb / EMBEDDINGS, mmap_mode="r")
    blocks = (np.ascontiguousarray(x[i: i + 65536]) for i in range(0, len(x), 65536))
    return knn_ground_truth(q, blocks, k, faiss.METRIC_INNER_PRODUCT, ngpu=0)[1]
