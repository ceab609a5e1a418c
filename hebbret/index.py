"""FAISS indexes built from an embeddings dir: ``index.faiss`` + ``items.jsonl`` + ``meta.json``."""

from __future__ import annotations

import functools
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ._io import JsonLines, atomic_path, read_json, write_json
from .artifacts import CURRENT, INDEX, INDEX_FILES, ITEMS, IVFDATA, META
from .embed import load_embeddings
from .models._base import fit_pca
from .version import __version__

log = logging.getLogger(__name__)

METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
MIN_POINTS_PER_CENTROID = 39  # FAISS's own k-means warning threshold


def _centroids(index: faiss.Index) -> int:
    """The most centroids any k-means inside ``index`` must learn (0 if it needs no training)."""
    need = 0
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        need = max(need, ivf.nlist)
        inner = faiss.downcast_index(ivf)
        if hasattr(inner, "pq"):
            need = max(need, inner.pq.ksub)
    inner = faiss.downcast_index(index)
    if hasattr(inner, "pq"):
        need = max(need, inner.pq.ksub)
    return need


def as_float32(x: np.ndarray, normalize: bool) -> np.ndarray:
    x = np.array(x, dtype=np.float32, order="C")
    if normalize:
        faiss.normalize_L2(x)
    return x


def set_search_params(index: faiss.Index, params: dict[str, Any]) -> dict[str, Any]:
    """Apply ``nprobe`` / ``efSearch`` (those that exist for this index); returns those now in force."""
    ps = faiss.ParameterSpace()
    for key, value in params.items():
        if value is not None:
            ps.set_index_parameter(index, key, value)
    used: dict[str, Any] = {}
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        used["nprobe"] = int(ivf.nprobe)
    inner = faiss.downcast_index(index)
    if hasattr(inner, "hnsw"):
        used["efSearch"] = int(inner.hnsw.efSearch)
    return used


def _set_pca(index: faiss.Index, x: np.ndarray, seed: int) -> bool:
    """Train a leading PCAMatrix of ``index`` (``PCA<d>``, or ``PCAW<d>``: whitened, each
    component scaled by eigenvalue^-½) from :func:`fit_pca`; False if there is none."""
    if not isinstance(index, faiss.IndexPreTransform):
        return False
    pca = faiss.downcast_VectorTransform(index.chain.at(0))
    if type(pca) is not faiss.PCAMatrix or pca.random_rotation:
        return False
    mean, comps, var = fit_pca(x, pca.d_out, seed)
    # a floor: PCAW divides by √var, and directions the data does not fill have var ≈ 0 (or < 0
    # by rounding)
    var = np.maximum(var, 1e-6 * max(float(var.max()), 1e-30)).astype(np.float32)
    faiss.copy_array_to_vector(mean, pca.mean)
    faiss.copy_array_to_vector(comps.ravel(), pca.PCAMat)
    faiss.copy_array_to_vector(var, pca.eigenvalues)
    pca.is_trained = True
    pca.prepare_Ab()
    for i in range(1, index.chain.size()):  # L2norm and the like need no training
        if not index.chain.at(i).is_trained:
            return False
    if not index.index.is_trained:
        return False
    index.is_trained = True
    return True


def trained_index(x: np.ndarray, factory: str, metric: int = faiss.METRIC_INNER_PRODUCT,
                  normalize: bool = True, seed: int = 0, pca_sample_bytes: int = 2 << 30,
                  source: str = "the collection") -> tuple[faiss.Index, np.ndarray]:
    """An empty FAISS ``index_factory`` index trained on a seeded sample of the rows of ``x``
    (n, d) (L2-normalised first when ``normalize``); returns it and the sampled rows. A leading
    ``PCA<d>`` or ``PCAW<d>`` is fitted with :func:`fit_pca` on at most ``pca_sample_bytes`` of
    float32 rows."""
    n, d = x.shape
    train_rows = np.zeros(0, np.int64)
    try:
        index = faiss.index_factory(d, factory, metric)
    except RuntimeError as e:
        raise ValueError(f"FAISS cannot build {factory!r} for dimension {d}: "
                         f"{str(e).strip().splitlines()[-1]}") from None
    if not index.is_trained:
        need = _centroids(index)
        if n < need:
            raise ValueError(f"{factory!r} must learn {need} centroids but {source} has only {n} "
                             f"vectors; use fewer lists (e.g. IVF{max(1, n // 39)}) or Flat")
        if n < MIN_POINTS_PER_CENTROID * need:
            log.warning("%s: %d vectors for %d centroids is fewer than %d per centroid; the "
                        "clustering will be poor", factory, n, need, MIN_POINTS_PER_CENTROID)
        rng = np.random.default_rng(seed)
        sample = max(need * 256, min(100_000, pca_sample_bytes // (4 * d)))
        train_rows = np.sort(rng.permutation(n)[:sample])
        x_train = as_float32(x[train_rows], normalize)
        if not _set_pca(index, x_train, seed):
            index.train(x_train)
        del x_train
    return index, train_rows


def filled_index(x: np.ndarray, factory: str, metric: int = faiss.METRIC_INNER_PRODUCT,
                 normalize: bool = True, chunk: int = 65536, seed: int = 0,
                 pca_sample_bytes: int = 2 << 30, source: str = "the collection") -> faiss.Index:
    """:func:`trained_index` holding every row of ``x``, in order."""
    n = len(x)
    index, _ = trained_index(x, factory, metric, normalize, seed, pca_sample_bytes, source)
    for i in range(0, n, chunk):
        index.add(as_float32(x[i: i + chunk], normalize))
    return index


def build_index(emb_dir: str | os.PathLike, out: str | os.PathLike, factory: str = "Flat",
                metric: str = "ip", normalize: bool | None = None, nprobe: int | None = None,
                ef_search: int | None = None, chunk: int = 65536, recall_queries: int = 500,
                seed: int = 0, pca_sample_bytes: int = 2 << 30, on_disk: bool = False,
                shard_rows: int = 262_144, extra_meta: dict[str, Any] | None = None) -> Path:
    """Build a FAISS index (any ``index_factory`` string) over an embeddings dir (``extra_meta``:
    more keys for its ``meta.json``).

    Default: exact ``Flat``, inner product on L2-normalised vectors (cosine). Approximate
    indexes record recall@10 against exact search for ``recall_queries`` rows held out of the
    training sample. A leading ``PCA<d>`` is fitted with :func:`fit_pca` on at most
    ``pca_sample_bytes`` of float32 vectors. ``on_disk`` (an IVF factory, e.g. ``IVF4096,SQ8``):
    the quantiser is trained on a sample, the vectors are added ``shard_rows`` at a time into
    block indexes, merged by ``faiss.contrib.ondisk.merge_ondisk`` into ``index.ivfdata``, which
    search memory-maps: neither the build nor a search holds all vectors in memory.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    normalize = metric == "ip" if normalize is None else normalize
    emb, items, emb_meta = load_embeddings(emb_dir)
    n, d = emb.shape
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / META).unlink(missing_ok=True)  # written last: marks a complete dir
    index, train_rows = trained_index(emb, factory, METRICS[metric], normalize, seed,
                                      pca_sample_bytes, source=str(emb_dir))
    build = out / ".build"
    if on_disk:
        try:
            index = fill_on_disk(index, emb, normalize, chunk, shard_rows, build, factory)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
    else:
        for i in range(0, n, chunk):
            index.add(as_float32(emb[i: i + chunk], normalize))
    search_params = set_search_params(index, {"nprobe": nprobe, "efSearch": ef_search})
    recall, held_out = _recall_vs_exact(index, emb, metric, normalize, recall_queries, seed,
                                        train_rows) if "Flat" != factory.strip() else (1.0, False)
    _write_index(index, out, build, on_disk)
    with atomic_path(out / ITEMS) as tmp:
        shutil.copyfile(Path(emb_dir) / ITEMS, tmp)
    write_json(out / META, {
        "factory": factory, "metric": metric, "dim": d, "count": int(index.ntotal),
        "normalization": "l2" if normalize else "none", "search_params": search_params,
        "recall_at_10_vs_flat": recall,
        "recall_queries": ("database rows held out of the quantiser's training sample" if held_out
                           else "database rows (the training sample covers every row)"),
        "on_disk": on_disk,
        "ivfdata_bytes": (out / IVFDATA).stat().st_size if on_disk else None,
        "ivfdata_path": str((out / IVFDATA).resolve()) if on_disk else None,
        "embeddings": str(Path(emb_dir).resolve()), "hebbret_version": __version__,
        **{k: emb_meta.get(k) for k in ("model_run", "model_sha256", "layer", "pool", "gem_p",
                                        "grid", "dims", "flip", "data_root")},
        **(extra_meta or {}),
    })
    _forget_generations(out)
    log.info("built %s over %d × %d vectors in %s (recall@10 vs Flat %.3f)", factory, n, d, out,
             recall)
    return out


GENERATION_PREFIX = "gen-"


def _forget_generations(out: Path) -> None:
    """A fresh build replaces what `index update` made: the pointer goes first (readers switch
    to the new files at once), then the generation dirs."""
    (out / CURRENT).unlink(missing_ok=True)
    for gen in out.glob(f"{GENERATION_PREFIX}*"):
        shutil.rmtree(gen, ignore_errors=True)


def current_dir(index_dir: str | os.PathLike) -> Path:
    """The dir holding an index's current files: ``INDEX/gen-NNNNNN`` when the pointer file
    ``INDEX/CURRENT`` (written by `hebbret index update`) names one, else INDEX itself."""
    index_dir = Path(index_dir)
    try:
        name = (index_dir / CURRENT).read_text().strip()
    except FileNotFoundError:
        return index_dir
    if not name.startswith(GENERATION_PREFIX) or "/" in name or name.startswith(".."):
        raise ValueError(f"{index_dir / CURRENT} names {name[:80]!r}, not a generation dir "
                         f"({GENERATION_PREFIX}NNNNNN); rebuild the index")
    return index_dir / name


def version_key(index_dir: str | os.PathLike) -> tuple:
    """Changes whenever the files readers of ``index_dir`` open change (an update publishes a
    generation, a build replaces meta.json): one read and one stat, cheap enough per request."""
    gen = current_dir(index_dir)
    try:
        st = (gen / META).stat()
    except FileNotFoundError:
        return (str(gen), None)
    return (str(gen), st.st_ino, st.st_mtime_ns)


def _write_index(index: faiss.Index, out: Path, build: Path, on_disk: bool) -> None:
    """``out/index.faiss`` atomically; on disk, the merged lists ``build/index.ivfdata`` move
    beside it first (the index records their final place; read back relative to it anyway)."""
    if not on_disk:
        (out / IVFDATA).unlink(missing_ok=True)
        with atomic_path(out / INDEX) as tmp:
            faiss.write_index(index, str(tmp))
        return
    ivf = faiss.extract_index_ivf(index)
    faiss.downcast_InvertedLists(ivf.invlists).filename = str((out / IVFDATA).resolve())
    faiss.write_index(index, str(build / INDEX))
    os.replace(build / IVFDATA, out / IVFDATA)
    os.replace(build / INDEX, out / INDEX)
    shutil.rmtree(build)


def fill_on_disk(trained: faiss.Index, emb: np.ndarray, normalize: bool, chunk: int,
                  shard_rows: int, build: Path, factory: str) -> faiss.Index:
    """Add ``emb`` into block indexes of ``shard_rows`` rows and merge them on disk into
    ``build/index.ivfdata``; returns the trained index now backed by those lists."""
    from faiss.contrib.ondisk import merge_ondisk

    if faiss.try_extract_index_ivf(trained) is None:
        raise ValueError(f"an on-disk index needs inverted lists: {factory!r} has none; use an "
                         f"IVF factory such as IVF4096,SQ8 or PCA256,IVF4096,PQ32")
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(parents=True)
    faiss.write_index(trained, str(build / "trained.faiss"))
    blocks = []
    for b, start in enumerate(range(0, len(emb), shard_rows)):
        block = faiss.read_index(str(build / "trained.faiss"))
        for i in range(start, min(start + shard_rows, len(emb)), chunk):
            xb = as_float32(emb[i: min(i + chunk, start + shard_rows)], normalize)
            block.add_with_ids(xb, np.arange(i, i + len(xb), dtype=np.int64))
        blocks.append(str(build / f"block-{b:05d}.faiss"))
        faiss.write_index(block, blocks[-1])
        del block
        log.info("on-disk index: %d of %d vectors added", min(start + shard_rows, len(emb)),
                 len(emb))
    merged = faiss.read_index(str(build / "trained.faiss"))
    merge_ondisk(merged, blocks, str(build / IVFDATA))
    for path in blocks:
        os.remove(path)
    os.remove(build / "trained.faiss")
    return merged


def _recall_vs_exact(index: faiss.Index, emb: np.ndarray, metric: str, normalize: bool,
                     queries: int, seed: int, held_out_of: np.ndarray | None = None,
                     k: int = 10, chunk: int = 65536) -> tuple[float, bool]:
    """Mean |approx top-k ∩ exact top-k| / k for ``queries`` database rows not in
    ``held_out_of`` (the quantiser's training sample; any rows when it covers them all), and
    whether the rows were held out; exact search streams the database."""
    from faiss.contrib.evaluation import knn_intersection_measure
    from faiss.contrib.exhaustive_search import knn_ground_truth

    n = len(emb)
    k = min(k, n)
    candidates = np.setdiff1d(np.arange(n), held_out_of if held_out_of is not None else [])
    held_out = len(candidates) > 0
    if not held_out:
        candidates = np.arange(n)
    rows = np.sort(np.random.default_rng(seed).permutation(candidates)[: min(queries, n)])
    q = as_float32(emb[rows], normalize)
    blocks = (as_float32(emb[i: i + chunk], normalize) for i in range(0, n, chunk))
    _, truth = knn_ground_truth(q, blocks, k, METRICS[metric], ngpu=0)
    _, found = index.search(q, k)
    return float(knn_intersection_measure(truth, found)), held_out


def _read(path: Path, flags: int | None = None) -> Any:
    """A FAISS index (``flags`` given) or a JSONL file, read once per version of the file: the
    cache is keyed by path, size and mtime, so a rebuilt index is read again (a server answers
    many searches from one index)."""
    st = path.stat()
    return _read_cached(str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, flags)


@functools.lru_cache(maxsize=4)
def _read_cached(path: str, inode: int, size: int, mtime_ns: int, flags: int | None) -> Any:
    return JsonLines(path) if flags is None else faiss.read_index(path, flags)


def load_index(index_dir: str | os.PathLike) -> tuple[faiss.Index, JsonLines, dict[str, Any]]:
    """(index, items, meta) of an index dir (of its current generation, once updated: all
    three from the same one); names any missing file. An on-disk index is opened with its
    inverted lists memory-mapped from ``index.ivfdata`` beside it."""
    if not Path(index_dir).is_dir():
        raise FileNotFoundError(f"index dir not found: {index_dir}")
    index_dir = current_dir(index_dir)
    for name in INDEX_FILES:
        if not (index_dir / name).is_file():
            raise FileNotFoundError(f"{index_dir} is not a complete index: {name} is missing")
    meta = read_json(index_dir / META)
    if "generation" in meta and not Path(meta.get("embeddings", "")).is_dir():
        meta["embeddings"] = str(index_dir / "embeddings")  # a generation's own, the dir moved
    flags = 0
    if meta.get("on_disk"):
        data = index_dir / IVFDATA
        if not data.is_file():
            raise FileNotFoundError(f"{index_dir} is an on-disk index but its inverted lists "
                                    f"{data} are missing; rebuild it with `hebbret index build "
                                    f"--on-disk`")
        if data.stat().st_size != meta.get("ivfdata_bytes"):
            raise ValueError(f"{data} holds {data.stat().st_size} bytes but the index was built "
                             f"with {meta.get('ivfdata_bytes')}: truncated or replaced; rebuild "
                             f"it with `hebbret index build --on-disk`")
        # the lists live beside index.faiss; FAISS opens the path it recorded unless the dir moved
        moved = meta.get("ivfdata_path") != str(data.resolve())
        flags = faiss.IO_FLAG_ONDISK_SAME_DIR if moved else 0
    try:
        index = _read(index_dir / INDEX, flags)
    except RuntimeError as e:
        raise ValueError(f"{index_dir / INDEX} is not a readable FAISS index (truncated "
                         f"or corrupt: {str(e).strip().splitlines()[-1][:200]}); rebuild it with "
                         f"`hebbret index build`") from None
    items = _read(index_dir / ITEMS)
    if index.ntotal != len(items):
        raise ValueError(f"{index_dir}: index.faiss holds {index.ntotal} vectors but items.jsonl "
                         f"has {len(items)} lines")
    return index, items, meta


def transform_like_index(index_dir: str | os.PathLike, x: np.ndarray, chunk: int = 8192
                         ) -> np.ndarray:
    """float32 (N, d): ``x`` (N, D) normalised and transformed as the index does before its
    search (e.g. L2 normalisation + the PCA of a ``PCA256,...`` index); x itself when the index
    has no transform."""
    owner, _, meta = load_index(index_dir)  # keeps the C++ index alive while its parts are used
    index = faiss.downcast_index(owner)
    chain = index.chain if isinstance(index, faiss.IndexPreTransform) else None
    parts = []
    for i in range(0, len(x), chunk):
        xb = np.array(x[i: i + chunk], dtype=np.float32)
        if meta.get("normalization") == "l2":
            faiss.normalize_L2(xb)
        for t in range(chain.size() if chain is not None else 0):
            xb = faiss.downcast_VectorTransform(chain.at(t)).apply(xb)
        parts.append(xb)
    return np.concatenate(parts)


def index_info(index_dir: str | os.PathLike) -> dict[str, Any]:
    """The meta of an index dir (factory, recall@10 against exact search, search parameters),
    checked against the index it describes, with its size on disk."""
    index, _, meta = load_index(index_dir)
    size = sum(p.stat().st_size for p in current_dir(index_dir).iterdir() if p.is_file())
    return {**meta, "ntotal": int(index.ntotal), "is_trained": bool(index.is_trained),
            "size_on_disk_bytes": size, "nprobe": meta.get("search_params", {}).get("nprobe")}


def search_index(index_dir: str | os.PathLike, queries: np.ndarray, k: int = 10,
                 nprobe: int | None = None, ef_search: int | None = None,
                 rows: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, list[dict], dict[str, Any]]:
    """k nearest database rows of each query (Q, D).

    Returns scores float32 (Q, k'), ids int64 (Q, k') with k' = min(k, index size), the index's
    items and meta. Queries are normalised the way the database was.
    """
    return search_loaded(load_index(index_dir), queries, k, nprobe, ef_search, str(index_dir),
                         rows)


def selector_params(index: faiss.Index, rows: np.ndarray) -> faiss.SearchParameters:
    """Search parameters that restrict ``index``'s search to ``rows`` (int64 (R,)) inside FAISS
    (an ``IDSelectorBatch``), carrying the nprobe / efSearch now set on it (parameters passed
    to a search replace the index's own). The selector lives as long as the parameters."""
    sel = faiss.IDSelectorBatch(np.ascontiguousarray(rows, dtype=np.int64))
    ivf = faiss.try_extract_index_ivf(index)
    inner = faiss.downcast_index(index.index if isinstance(
        faiss.downcast_index(index), faiss.IndexPreTransform) else index)
    if ivf is not None:
        params = faiss.SearchParametersIVF(sel=sel, nprobe=int(ivf.nprobe))
    elif hasattr(inner, "hnsw"):
        params = faiss.SearchParametersHNSW(sel=sel, efSearch=int(inner.hnsw.efSearch))
    else:
        params = faiss.SearchParameters(sel=sel)
    params.keep_selector_alive = sel  # the SWIG object holds only a pointer
    return params


def search_loaded(loaded: tuple[faiss.Index, list[dict], dict[str, Any]], queries: np.ndarray,
                  k: int = 10, nprobe: int | None = None, ef_search: int | None = None,
                  name: str = "the index", rows: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray, list[dict], dict[str, Any]]:
    """:func:`search_index` on an index already opened by :func:`load_index` (one search at a
    time per index object: the search parameters are set on it). ``rows`` (int64 (R,)): search
    only these rows of the collection, filtered inside FAISS (fewer than k hits: id -1)."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    index, items, meta = loaded
    queries = np.asarray(queries)
    if queries.ndim != 2 or queries.shape[1] != index.d:
        raise ValueError(f"queries have dimension {queries.shape[-1]} but {name} holds "
                         f"{index.d}-dimensional vectors")
    if not np.isfinite(queries).all():
        bad = np.flatnonzero(~np.isfinite(queries).all(axis=1))[:5].tolist()
        raise ValueError(f"queries hold NaN or inf in rows {bad}")
    set_search_params(index, {**meta.get("search_params", {}), "nprobe": nprobe,
                              "efSearch": ef_search} if (nprobe or ef_search) else
                      meta.get("search_params", {}))
    k = min(k, index.ntotal)
    params = None if rows is None else selector_params(index, rows)
    scores, ids = index.search(as_float32(queries, meta["normalization"] == "l2"), k,
                               params=params)
    return scores, ids, items, meta
