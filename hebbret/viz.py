"""Pictures for the report: first-layer filters, convergence over steps, retrieval examples."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ._io import atomic_path, read_jsonl
from .artifacts import TRAIN_LOG
from .data import open_dataset
from .embed import load_embeddings
from .index import search_index
from .runs import load_run, read_card


def filter_grid(weight: torch.Tensor, scale: int = 4, pad: int = 1) -> np.ndarray:
    """Tile conv filters (K, C, kh, kw) into one uint8 image (H, W, 3), each filter min-max scaled.

    RGB filters stay RGB; other channel counts are averaged to grey.
    """
    w = weight.detach().float().cpu()
    w = w if w.shape[1] == 3 else w.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    lo = w.amin(dim=(1, 2, 3), keepdim=True)
    hi = w.amax(dim=(1, 2, 3), keepdim=True)
    w = (w - lo) / (hi - lo).clamp_min(1e-12)
    k, _, kh, kw = w.shape
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    cell_h, cell_w = kh * scale + pad, kw * scale + pad
    grid = np.ones((rows * cell_h + pad, cols * cell_w + pad, 3), dtype=np.float32)
    tiles = w.repeat_interleave(scale, 2).repeat_interleave(scale, 3).permute(0, 2, 3, 1).numpy()
    for i in range(k):
        r, c = divmod(i, cols)
        grid[pad + r * cell_h: pad + r * cell_h + kh * scale,
             pad + c * cell_w: pad + c * cell_w + kw * scale] = tiles[i]
    return (grid * 255).round().astype(np.uint8)


def save_filters(run: str | os.PathLike, out: str | os.PathLike | None = None,
                 scale: int = 4) -> Path:
    """Write the first Hebbian layer's filters of run dir ``run`` as a PNG grid; returns its path."""
    model, _ = load_run(run)
    first = model.hebb_layers()[0]
    if first.weight.dim() != 4:
        raise ValueError(f"the first Hebbian layer of {run} is not a convolution")
    out = Path(out) if out is not None else Path(run) / "filters.png"
    with atomic_path(out) as tmp:
        Image.fromarray(filter_grid(first.weight, scale)).save(tmp, format="PNG")
    return out


def save_convergence(run: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Plot how fast each Hebbian layer of run dir ``run`` moves (relative weight change per
    step, as a share of its peak; from ``log.jsonl``) over the steps, with the convergence
    threshold (:data:`hebbret.pretraining.CONVERGED_SPEED`); returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .pretraining import CONVERGED_SPEED, drift_speeds

    run = Path(run)
    series = drift_speeds(read_jsonl(run / TRAIN_LOG))
    if not series:
        raise ValueError(f"{run / 'log.jsonl'} has no weight-drift measurements (a run made "
                         f"before hebbret measured them, or a rule that does not learn)")
    conv = read_card(run).training.get("convergence", {"layers": []})
    rules = {la["layer"]: la["rule"] for la in conv["layers"]}
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for i, (steps, speeds) in sorted(series.items()):
        v = np.asarray(speeds)
        peak = np.convolve(v, np.ones(3) / 3, mode="valid").max() if len(v) >= 3 else v.max()
        ax.plot(steps, v / max(peak, 1e-30), label=f"layer {i} ({rules.get(i, '?')})")
    ax.axhline(CONVERGED_SPEED, color="k", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("turning speed / its peak")
    ax.set_title("converged when the last fifth of the steps is below the dotted line",
                 fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out) if out is not None else run / "convergence.png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out


def save_retrieval_examples(index_dir: Path, test_emb: Path, train: tuple[str, str],
                            test: tuple[str, str], out: Path, data_root: str | None = None,
                            img_size: int = 32, queries: int = 6, seed: int = 0, top: int = 8,
                            scale: int = 3) -> None:
    """A PNG of ``queries`` rows: a random test query (seeded), then its top-``top`` database
    images framed green (same class) or red (other class). ``train``/``test``: (source, split)."""
    db = open_dataset(train[0], train[1], data_root=data_root, img_size=img_size,
                      cache=False)
    qs = open_dataset(test[0], test[1], data_root=data_root, img_size=img_size,
                      cache=False)
    emb, items, _ = load_embeddings(test_emb)
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.permutation(len(items))[:queries])
    _, ids, db_items, _ = search_index(index_dir, np.asarray(emb[picks]), k=top)
    where_q = {it.path: i for i, it in enumerate(qs.items)}
    where_db = {it.path: i for i, it in enumerate(db.items)}

    def tile(img: np.ndarray, color: tuple[int, int, int] | None) -> np.ndarray:
        img = img if img.shape[2] == 3 else np.repeat(img, 3, axis=2)
        img = np.asarray(Image.fromarray(img).resize((32 * scale, 32 * scale), Image.NEAREST))
        framed = np.full((img.shape[0] + 8, img.shape[1] + 8, 3), 255, np.uint8)
        if color is not None:
            framed[:, :] = color
        framed[4:-4, 4:-4] = img
        return framed

    rows = []
    for q, found in zip(picks, ids, strict=True):
        label = items[q]["label"]
        cells = [tile(qs.raw(where_q[items[q]["path"]]), None)]
        for i in found[found >= 0]:
            ok = db_items[i]["label"] == label
            cells.append(tile(db.raw(where_db[db_items[i]["path"]]),
                              (40, 170, 60) if ok else (210, 40, 40)))
        gap = np.full((cells[0].shape[0], 12, 3), 255, np.uint8)
        rows.append(np.concatenate([cells[0], gap, *cells[1:]], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((4, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    with atomic_path(out) as tmp:
        Image.fromarray(np.concatenate(rows, axis=0)).save(tmp, format="PNG")
