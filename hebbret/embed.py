"""Frozen backbone -> embeddings dir: ``embeddings.npy`` (N×D), ``items.jsonl``, ``meta.json``.

Rows are written to disk batch by batch (memory bounded by the batch), row *i* of the array is
line *i* of ``items.jsonl``; files that cannot be decoded are skipped and counted in the meta.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from numpy.lib.format import open_memmap
from PIL import Image
from torch import Tensor, nn
from torch.nn import functional as F

from ._io import atomic_path, read_json, read_jsonl, write_json, write_jsonl
from .artifacts import EMBEDDING_FILES, EMBEDDINGS, ITEMS, META
from .config import DTYPES, EMBED_BATCH_SIZE, FLIPS, POOLS, check_flip
from .data import (
    ImageDataset,
    SkippedFiles,
    held_out,
    load_image,
    make_loader,
    open_dataset,
    shard_bounds,
    to_tensor,
)
from .distributed import (
    ShardSum,
    barrier,
    check_same_data,
    join,
    main_first,
    union_rows,
)
from .models import HebbNet
from .progress import progress
from .runs import GEM_P, EmbeddingSpec, ModelCard, load_run, read_card
from .runtime import pick_device
from .version import __version__

log = logging.getLogger(__name__)



def layer_names(model: HebbNet) -> list[str]:
    """Layers an embedding can be taken from: 'features' (the backbone's output) or 'block<i>';
    several joined by '+' (e.g. 'block1+features') are pooled one by one and concatenated."""
    return ["features"] + [f"block{i}" for i in range(len(model.blocks))]


def _block_index(model: HebbNet, layer: str) -> int:
    if layer == "features":
        return len(model.blocks) - 1
    if layer.startswith("block") and layer[5:].isdigit() and int(layer[5:]) < len(model.blocks):
        return int(layer[5:])
    raise ValueError(f"unknown layer {layer!r}; choose one of {layer_names(model)} (or several "
                     f"joined by '+')")


def global_pool(h: Tensor, pool: str, gem_p: float = GEM_P, grid: int = 1) -> Tensor:
    """A map (B, C, H, W) -> (B, C·grid²): avg, max or GeM (generalised mean, (mean x^p)^(1/p):
    p = 1 is avg, p → ∞ max; Radenović et al.) over each cell of a grid×grid partition of the
    positions (1: the whole map), cell-major; or flattened -> (B, C·H·W)."""
    if h.dim() == 2 or pool == "flatten":
        return h.flatten(1)
    if pool == "max":
        return F.adaptive_max_pool2d(h, grid).flatten(1)
    if pool == "avg":
        return F.adaptive_avg_pool2d(h, grid).flatten(1)
    h = h.float().clamp_min(1e-6).pow(gem_p)
    return F.adaptive_avg_pool2d(h, grid).pow(1.0 / gem_p).flatten(1)


VIEWS = {"none": ((),), "h": ((), (-1,)), "hv": ((), (-1,), (-2,), (-1, -2))}  # flipped dims


class Extractor(nn.Module):
    """A backbone cut at ``spec.layer`` plus pooling: normalised images (B, C, H, W) -> (B, D)
    (``spec`` None: the backbone's own descriptor, ``default_cfg["embedding"]``).

    Several layers ('block1+features') run the backbone once; each layer's pooled vector is
    L2-normalised before they are concatenated, so each counts equally whatever its width.
    ``spec.dims`` > 0: the pooled vector goes through the backbone's fitted
    :class:`~hebbret.models.DescriptorPCA` -> (B, dims).
    """

    def __init__(self, model: HebbNet, spec: EmbeddingSpec | None = None) -> None:
        super().__init__()
        spec = spec or EmbeddingSpec(**{**model.default_cfg["embedding"],
                                         "dims": model.descriptor_pca.dims})
        if spec.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {spec.pool!r}")
        if not spec.gem_p >= 1:
            raise ValueError(f"the GeM exponent must be at least 1, got {spec.gem_p}")
        if spec.grid < 1:
            raise ValueError(f"the pooling grid must be at least 1×1, got {spec.grid}")
        if spec.flip not in FLIPS:
            raise ValueError(f"flip must be one of {FLIPS}, got {spec.flip!r}")
        if spec.dims and spec.dims != model.descriptor_pca.dims:
            raise ValueError(f"the descriptor is projected to {spec.dims} dimensions but the "
                             f"backbone holds {model.descriptor_pca.dims or 'no'} fitted PCA "
                             f"dimensions: the weights and the model card do not belong together")
        self.model, self.spec = model, spec
        self.blocks = [_block_index(model, name) for name in spec.layer.split("+")]

    def forward(self, x: Tensor) -> Tensor:
        x = self.views(x).sum(0)
        return self.model.descriptor_pca(x) if self.spec.dims else x

    def views(self, x: Tensor) -> Tensor:
        """The pooled descriptor of each view (V, B, D), unprojected; each L2-normalised when
        there are several (V > 1), so that their sum weighs them equally."""
        views = VIEWS[self.spec.flip]
        if len(views) == 1:
            return self._pooled(x).unsqueeze(0)
        x = torch.cat([x.flip(dims) if dims else x for dims in views])  # one batch: (V·B, C, H, W)
        return F.normalize(self._pooled(x), dim=1).unflatten(0, (len(views), -1))

    def _pooled(self, x: Tensor) -> Tensor:
        maps: dict[int, Tensor] = {}
        x = self.model.stem(x)
        for i, block in enumerate(self.model.blocks[:max(self.blocks) + 1]):
            x = block(x)
            maps[i] = x
        parts = [global_pool(maps[i], self.spec.pool, self.spec.gem_p, self.spec.grid).float()
                 for i in self.blocks]
        return parts[0] if len(parts) == 1 else torch.cat([F.normalize(p, dim=1) for p in parts], 1)


def embed_batch(model: HebbNet, x: Tensor, spec: EmbeddingSpec | None = None) -> Tensor:
    """Embeddings of a batch: x (B, C, H, W) -> float32 (B, D), no autograd; ``spec`` None:
    the backbone's own descriptor."""
    with torch.inference_mode():
        return Extractor(model, spec)(x)


# the backbone's weights in NHWC: 1.6× faster oneDNN convolutions for c3 at 28 px, batch 256
INFERENCE_FORMAT = torch.channels_last
PCA_IMAGES = 10_000  # the descriptor PCA is fitted on at most this many training images
PCA_SAMPLE_BYTES = 1 << 30  # ... and at most this much float32 descriptor
PCA_BATCH_SIZE = 64  # after training, beside the training state: small batches, little memory


@torch.no_grad()
def fit_descriptor_pca(model: HebbNet, dataset: ImageDataset, dims: int,
                       seed: int = 0, device: torch.device | str = "cpu", num_workers: int = 0,
                       quiet: bool = False, flip: str | None = None
                       ) -> tuple[dict[str, Any], DescriptorSample | None]:
    """Fit ``model.descriptor_pca`` on the backbone's own descriptor of seeded-random images of
    ``dataset`` (at most PCA_IMAGES, and PCA_SAMPLE_BYTES of float32, twice that while 'auto'
    chooses), to ``dims`` dimensions, fewer when fewer images were seen (0: no PCA, no sample).
    A descriptor of at most ``dims`` values is left as it is.

    ``flip``: the views the descriptor sums (:class:`EmbeddingSpec`), written into the
    backbone's descriptor (``default_cfg["embedding"]``); None: its own; 'auto': its own or the
    image alone, whichever :func:`choose_views` finds better on held-out training rows.
    Returns ({"dims": fitted dims (0: none), "images": images used, "flip": the views, and with
    'auto' "flip_knn": {views: kNN top-1 % on held-out rows}}, the sample it was fitted on)."""
    check_flip(flip)
    emb = model.default_cfg["embedding"]
    views = emb.get("flip", "none") if flip in (None, "auto") else flip
    model.descriptor_pca.clear()
    if dims == 0:  # no PCA: no sample, so 'auto' keeps the backbone's own views
        emb["flip"] = views
        return {"dims": 0, "images": 0, "flip": views}, None
    was_training = model.training
    sample, first, labels = _sample_descriptors(
        Extractor(model.eval(), EmbeddingSpec(**{**emb, "flip": views})), dataset, dims,
        seed, device, num_workers, quiet, keep_first=flip == "auto" and views != "none")
    model.train(was_training)
    x = sample.x
    # no wider than the PCA it would get from every image: the first batch only was read
    narrow = len(x) > 0 and x.shape[1] <= min(dims, min(_sample_cap(x.shape[1]), len(dataset)) - 1)
    info: dict[str, Any] = {}
    if first is not None and not narrow:
        views, info["flip_knn"] = choose_views(x, first, labels, views, seed)
        x = sample.x = first if views == "none" else x
    emb["flip"] = views
    dims = min(dims, len(x) - 1)
    if narrow or dims < 1 or x.shape[1] <= dims:
        log.info("descriptor left unprojected (%d values, %d images)", x.shape[1], len(x))
        return {"dims": 0, "images": len(x), "flip": views, **info}, sample
    model.descriptor_pca.fit(x, dims, seed)
    model.descriptor_pca.to(device)
    log.info("fitted the descriptor PCA %d -> %d dims on %d images", x.shape[1], dims, len(x))
    return {"dims": dims, "images": len(x), "flip": views, **info}, sample


@dataclass
class DescriptorSample:
    """What :func:`fit_descriptor_pca` saw: descriptors ``x`` (n, D) of the chosen views,
    unprojected (each view L2-normalised when there are several), of dataset ``rows`` (n,), and
    the files that could not be decoded on the way."""

    x: np.ndarray
    rows: np.ndarray
    skipped: SkippedFiles

    def covers(self, dataset: ImageDataset) -> bool:
        """Whether every row of ``dataset`` is in the sample or was skipped."""
        return len(self.rows) + self.skipped.count == len(dataset)


def _sample_cap(width: int) -> int:
    """Images in the PCA's sample of descriptors ``width`` values wide."""
    return min(PCA_IMAGES, PCA_SAMPLE_BYTES // (4 * width))


def _sample_descriptors(extractor: Extractor, dataset: ImageDataset, dims: int, seed: int,
                        device: torch.device | str, num_workers: int, quiet: bool,
                        keep_first: bool
                        ) -> tuple[DescriptorSample, np.ndarray | None, np.ndarray]:
    """Descriptors of seeded-random images for :func:`fit_descriptor_pca`, with (when
    ``keep_first``) their first view alone (n, D), and their labels (n,). Stops after one batch
    when the descriptor is no wider than the PCA it would get from every image."""
    skipped = SkippedFiles(dataset)
    x = first = labels = rows = None
    n = 0
    with progress(total=min(PCA_IMAGES, len(dataset)), unit="img", quiet=quiet,
                  desc="descriptor PCA") as bar:
        for batch in make_loader(dataset, PCA_BATCH_SIZE, seed, num_workers=num_workers,
                                 device=device):
            skipped.add(batch.skipped)
            if not len(batch.images):
                continue
            pooled = extractor.views(batch.images.to(device)).cpu()  # (V, B, D)
            if x is None:  # the width is known: room for the whole sample, filled in place
                size = min(_sample_cap(pooled.shape[2]), len(dataset))
                x = np.empty((size, pooled.shape[2]), np.float32)
                first = np.empty_like(x) if keep_first else None
                labels, rows = np.empty(size, np.int64), np.empty(size, np.int64)
            take = min(len(pooled[0]), len(x) - n)
            x[n:n + take] = pooled.sum(0)[:take].numpy()
            if first is not None:
                first[n:n + take] = pooled[0, :take].numpy()
            labels[n:n + take], rows[n:n + take] = batch.labels[:take], batch.indices[:take]
            n += take
            bar.update(len(batch.images))
            if n == len(x) or x.shape[1] <= min(dims, len(x) - 1):
                break
    if x is None:
        return (DescriptorSample(np.zeros((0, 0), np.float32), np.zeros(0, np.int64), skipped),
                None, np.zeros(0, np.int64))
    return (DescriptorSample(x[:n], rows[:n], skipped), None if first is None else first[:n],
            labels[:n])


CHOICE_K = 20  # the kNN that chooses the views: k as `hebbret run` scores


def choose_views(x: np.ndarray, first: np.ndarray, labels: np.ndarray, views: str, seed: int = 0
                 ) -> tuple[str, dict[str, float]]:
    """``views`` (descriptors ``x`` (n, D) summed over them) or 'none' (``first`` (n, D), the
    image alone): whichever has the higher weighted-kNN top-1 when a seeded fifth of every
    class (:func:`~hebbret.data.held_out`) queries the rest; ``views`` on a tie, and without
    labels of at least 2 classes. Returns (views, {views: top-1 %})."""
    from .eval.knn import knn_classify  # eval reads embeddings with this module

    val = held_out(labels, 0.2, seed)
    if len(np.unique(labels)) < 2 or not val.any() or val.all():  # e.g. one image a class
        return views, {}
    top1 = {name: next(iter(knn_classify(v[~val], labels[~val], v[val], labels[val],
                                          ks=[CHOICE_K])["k"].values()))["top1"]  # k ≤ rows
            for name, v in ((views, x), ("none", first))}
    best = max(top1, key=top1.__getitem__)
    log.info("descriptor views: %s (kNN top-1 on %d held-out training rows: %s)", best,
             int(val.sum()), ", ".join(f"{k} {v:.2f}" for k, v in top1.items()))
    return best, top1


def spec_of(meta: dict[str, Any]) -> EmbeddingSpec:
    """The descriptor an embeddings or index dir's ``meta.json`` records."""
    return EmbeddingSpec(meta["layer"], meta["pool"], meta.get("gem_p") or GEM_P,
                         meta.get("grid") or 1, meta.get("dims") or 0, meta.get("flip") or "none")


def embedding_spec(card: ModelCard, layer: str | None = None, pool: str | None = None,
                   gem_p: float | None = None, grid: int | None = None, project: bool = True,
                   flip: str | None = None) -> EmbeddingSpec:
    """The run's documented descriptor (``model.json`` -> ``embedding``) with overrides. Its PCA
    projection (``dims``) was fitted on that descriptor: dropped when one differs, or when
    ``project`` is False (the pooled descriptor as it is)."""
    spec = card.embedding
    new = EmbeddingSpec(layer or spec.layer, pool or spec.pool,
                        spec.gem_p if gem_p is None else float(gem_p),
                        spec.grid if grid is None else int(grid), spec.dims if project else 0,
                        flip or spec.flip)
    if new.dims and new != spec:
        log.info("descriptor %s/%s is not the one the backbone's PCA was fitted on: not "
                 "projected", new.layer, new.pool)
        new = replace(new, dims=0)
    return new


def extract_embeddings(run: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike,
                       layer: str | None = None, pool: str | None = None,
                       gem_p: float | None = None, grid: int | None = None,
                       project: bool = True, batch_size: int = EMBED_BATCH_SIZE,
                       dtype: str = "float32", device: str = "auto", split: str = "train",
                       data_root: str | None = None, num_workers: int = 0,
                       quiet: bool = False, flip: str | None = None) -> Path:
    """Embed every image of ``data`` with the frozen backbone of run dir ``run``.

    Args:
        layer, pool, gem_p, grid, flip: where to read the features, how to pool them, which
            flipped views to sum; None: the run's documented descriptor (``model.json`` ->
            ``embedding``).
        project: False: without the backbone's descriptor PCA; dtype: float32 | float16.
    Returns the embeddings dir ``out``.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    model, card = load_run(run)
    desc, spec = embedding_spec(card, layer, pool, gem_p, grid, project, flip), card.input
    w, dev = join(pick_device(device))  # under torchrun: rank r embeds its share of the batches
    with main_first():  # rank 0 packs the image cache once for every rank
        dataset = open_dataset(data, split, spec.in_chans, spec.img_size, data_root,
                               mean=spec.mean, std=spec.std)
    model.to(dev, memory_format=INFERENCE_FORMAT).eval()
    out = Path(out)
    if w.is_main:  # meta.json is written last: it marks a complete dir
        out.mkdir(parents=True, exist_ok=True)
        (out / META).unlink(missing_ok=True)
    check_same_data(getattr(dataset, "items", []), str(data))
    n = len(dataset)  # whole batches per rank: the same batches as one process would run
    first, last = shard_bounds(-(-n // batch_size), w.rank, w.size)
    mine = range(first * batch_size, min(last * batch_size, n))
    target = out if w.size == 1 else out / SHARDS / f"rank-{w.rank:05d}-of-{w.size:05d}"
    target.mkdir(parents=True, exist_ok=True)
    rows, skipped = embed_rows(model, dataset, mine, target / EMBEDDINGS, batch_size, dtype, dev,
                                desc, num_workers, quiet or not w.is_main)
    if w.size > 1:
        write_jsonl(target / ITEMS, [{"row": r} for r in rows])
        skipped.rows = union_rows(skipped.rows)  # every rank decides together:
        total = int(ShardSum()([torch.tensor([float(len(rows))])]).item())
        if total == 0:
            raise ValueError(f"none of the {n} files under {dataset.root} could be decoded")
        if not w.is_main:
            barrier(long=True)  # returns once rank 0 has merged the shards
            return out
        rows = _merge_shards(out, w.size)
    if not rows:
        (out / EMBEDDINGS).unlink(missing_ok=True)
        raise ValueError(f"none of the {n} files under {dataset.root} could be decoded")
    meta = _write_items_and_meta(out, dataset, rows, _meta(run, card, desc, data, split, dataset,
                                                           skipped, dtype, w.size))
    barrier(long=True)
    log.info("wrote %d × %d embeddings to %s (%d files skipped)", meta["count"], meta["dim"], out,
             skipped.count)
    return out


def write_sample_embeddings(run: str | os.PathLike, model: HebbNet, sample: DescriptorSample,
                            dataset: ImageDataset, data: str, split: str,
                            out: str | os.PathLike) -> Path:
    """The embeddings dir ``out`` of ``dataset`` (opened from ``data``/``split``) from the PCA's
    ``sample`` of it, which must hold every decodable row: what ``extract_embeddings(run, data,
    out, split=split)`` writes, without running ``model`` (the backbone of run dir ``run``,
    whose descriptor the sample is) over the images again."""
    card = read_card(run)
    desc = embedding_spec(card)
    if not (sample.covers(dataset) and desc.dims):
        raise ValueError(f"the descriptor sample is not the embedding of every image of {data}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / META).unlink(missing_ok=True)
    order = np.argsort(sample.rows, kind="stable")
    pca, x = model.descriptor_pca.cpu(), torch.from_numpy(sample.x)
    with torch.inference_mode():  # in chunks: no second copy of the sample
        emb = torch.cat([pca(x[i:i + 4096]) for i in range(0, len(x), 4096)]).numpy()[order]
    with atomic_path(out / EMBEDDINGS) as tmp, open(tmp, "wb") as f:
        np.save(f, emb.astype(np.float32, copy=False))
    meta = _write_items_and_meta(out, dataset, sample.rows[order].tolist(), _meta(
        run, card, desc, data, split, dataset, sample.skipped, "float32", 1))
    log.info("wrote %d × %d embeddings to %s from the descriptor PCA's sample (%d files "
             "skipped)", meta["count"], meta["dim"], out, sample.skipped.count)
    return out


def _meta(run: str | os.PathLike, card: ModelCard, desc: EmbeddingSpec, data: str | os.PathLike,
          split: str, dataset: ImageDataset, skipped: SkippedFiles, dtype: str,
          world_size: int) -> dict[str, Any]:
    """An embeddings dir's ``meta.json`` but its count and dimension."""
    return {"dtype": dtype, **asdict(desc), "normalization": "none",
            "model_run": str(Path(run).resolve()), "model_sha256": card.weights_sha256,
            "architecture": card.architecture, "data": str(data), "data_root": dataset.root,
            "split": split, "classes": dataset.classes, "skipped_files": skipped.count,
            "skipped_paths": skipped.paths, "hebbret_version": __version__,
            "world_size": world_size}


def _write_items_and_meta(out: Path, dataset: ImageDataset, rows: list[int],
                          meta: dict[str, Any]) -> dict[str, Any]:
    """``items.jsonl`` (one line per embedded row, in order) and, last, ``meta.json`` with the
    count and dimension of ``embeddings.npy`` added to ``meta``; returns the meta."""
    write_jsonl(out / ITEMS, [
        {"path": dataset.items[r].path, "label": dataset.items[r].label,
         "class_name": dataset.items[r].class_name} for r in rows])
    meta = {"count": len(rows), "dim": int(np.load(out / EMBEDDINGS, mmap_mode="r").shape[1]),
            **meta}
    write_json(out / META, meta)
    return meta


SHARDS = ".shards"  # per-rank pieces of an embeddings dir being written under torchrun


def embed_rows(model: HebbNet, dataset: ImageDataset, rows: Sequence[int], path: Path,
               batch_size: int, dtype: str, dev: torch.device, desc: EmbeddingSpec,
               num_workers: int, quiet: bool) -> tuple[list[int], SkippedFiles]:
    """Embed dataset ``rows`` in order into the .npy ``path`` (atomically); returns the rows
    written (undecodable files left out) and the skipped files."""
    skipped = SkippedFiles(dataset)
    kept: list[int] = []
    with atomic_path(path) as tmp, \
            progress(total=len(rows), unit="img", unit_scale=True, quiet=quiet,
                     desc="embed") as bar:
        arr = None
        for batch in make_loader(dataset, batch_size, seed=None, num_workers=num_workers,
                                 rows=rows, device=dev):
            skipped.add(batch.skipped)
            bar.update(len(batch.images) + len(batch.skipped))
            if not len(batch.images):
                continue
            emb = embed_batch(model, batch.images.to(dev), desc).cpu().numpy()
            if arr is None:
                arr = open_memmap(tmp, mode="w+", dtype=dtype, shape=(len(rows), emb.shape[1]))
            arr[len(kept): len(kept) + len(emb)] = emb
            kept += batch.indices.tolist()
        if arr is None:  # nothing decodable here: an empty (0, D) shard
            dim = embed_batch(model, torch.zeros(1, *model.default_cfg["input_size"], device=dev),
                              desc).shape[1]
            arr = open_memmap(tmp, mode="w+", dtype=dtype, shape=(0, dim))
        arr.flush()
        if len(kept) < arr.shape[0]:  # skipped files: keep the filled rows only
            del arr
            _truncate_npy(tmp, len(kept))
        else:
            del arr
    return kept, skipped


def _merge_shards(out: Path, size: int, chunk: int = 8192) -> list[int]:
    """Concatenate the ranks' shards of ``out`` in rank order into ``out/embeddings.npy``
    (chunk by chunk, never all in memory); removes the shards; returns the dataset rows."""
    parts = [out / SHARDS / f"rank-{r:05d}-of-{size:05d}" for r in range(size)]
    arrays = [np.load(p / EMBEDDINGS, mmap_mode="r") for p in parts]
    rows = [r["row"] for p in parts for r in read_jsonl(p / ITEMS)]
    total = sum(len(a) for a in arrays)
    with atomic_path(out / EMBEDDINGS) as tmp:
        dst = open_memmap(tmp, mode="w+", dtype=arrays[0].dtype, shape=(total, arrays[0].shape[1]))
        at = 0
        for a in arrays:
            for i in range(0, len(a), chunk):
                piece = a[i: i + chunk]
                dst[at: at + len(piece)] = piece
                at += len(piece)
        dst.flush()
        del dst
    del arrays
    shutil.rmtree(out / SHARDS)
    return rows


def _truncate_npy(path: Path, rows: int, chunk: int = 4096) -> None:
    """Rewrite an .npy file keeping its first ``rows`` rows, copying in chunks."""
    src = np.load(path, mmap_mode="r")
    part = path.with_name(path.name + ".part")
    dst = open_memmap(part, mode="w+", dtype=src.dtype, shape=(rows, src.shape[1]))
    for i in range(0, rows, chunk):
        dst[i: i + chunk] = src[i: min(i + chunk, rows)]
    dst.flush()
    del dst, src
    shutil.move(part, path)


def load_embeddings(emb_dir: str | os.PathLike, check_finite: bool = True,
                    read_items: bool = True
                    ) -> tuple[np.ndarray, list[dict[str, Any]], dict[str, Any]]:
    """Open an embeddings dir: (embeddings memmap (N, D), items, meta), validated
    (``read_items`` False: items [] and not parsed, for callers that hold them already).

    Raises FileNotFoundError naming a missing file, ValueError when the array and
    ``items.jsonl`` disagree in length or the array holds NaN/inf (naming the first rows).
    """
    emb_dir = Path(emb_dir)
    for name in EMBEDDING_FILES:
        if not (emb_dir / name).is_file():
            raise FileNotFoundError(f"{emb_dir} is not an embeddings dir: {name} is missing")
    try:
        emb = np.load(emb_dir / EMBEDDINGS, mmap_mode="r")
    except (ValueError, OSError) as e:
        raise ValueError(f"{emb_dir / 'embeddings.npy'} is not a readable .npy array (truncated "
                         f"or corrupt: {e}); embed again") from None
    items = read_jsonl(emb_dir / ITEMS) if read_items else []
    if emb.ndim != 2:
        raise ValueError(f"{emb_dir / 'embeddings.npy'} must be 2-D (N, D), got shape {emb.shape}")
    if read_items and len(items) != emb.shape[0]:
        raise ValueError(f"{emb_dir}: embeddings.npy has {emb.shape[0]} rows but items.jsonl has "
                         f"{len(items)} lines; they must match row for row")
    if check_finite:
        check_finite_rows(emb, str(emb_dir / EMBEDDINGS))
    return emb, items, read_json(emb_dir / META)


def check_finite_rows(x: np.ndarray, name: str, chunk: int = 8192) -> None:
    """Raise ValueError naming the first rows of ``x`` (N, D) that hold NaN or inf."""
    bad: list[int] = []
    for i in range(0, len(x), chunk):
        block_bad = np.flatnonzero(~np.isfinite(np.asarray(x[i: i + chunk])).all(axis=1))
        bad += (block_bad + i).tolist()
        if len(bad) >= 5:
            break
    if bad:
        raise ValueError(f"{name} holds NaN or inf in rows {bad[:5]}{' ...' if len(bad) > 5 else ''}")


def embed_images(model: HebbNet, card: ModelCard, paths: list[str | os.PathLike | IO[bytes]],
                 desc: EmbeddingSpec, device: str = "cpu") -> np.ndarray:
    """Embeddings float32 (len(paths), D) of image files (or open binary files, e.g. uploads),
    preprocessed as the model card says.

    Unlike dataset extraction, a query image that cannot be decoded is an error naming it.
    """
    spec = card.input
    images = []
    for p in paths:
        if isinstance(p, (str, os.PathLike)) and not Path(p).is_file():
            raise FileNotFoundError(f"query image not found: {p}")
        try:
            arr = load_image(p, spec.in_chans, spec.img_size)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            name = p if isinstance(p, (str, os.PathLike)) else "upload"
            raise ValueError(f"query image {name} cannot be decoded: {e}") from None
        images.append(to_tensor(arr, spec.mean, spec.std))
    dev = pick_device(device)
    model.to(dev, memory_format=INFERENCE_FORMAT).eval()
    return embed_batch(model, torch.stack(images).to(dev), desc).cpu().numpy()
