"""The main job: pretrain -> fine-tune on few labels -> embed -> index -> evaluate, for Hebbian
pretraining against random init and from-scratch training, ending in one report.

Rows of the report:
- ``hebbian``: Hebbian pretraining; embeddings of the frozen Hebbian backbone; accuracy of that
  backbone fine-tuned end-to-end (``full``) on the few labels.
- ``random``: random weights (BatchNorm statistics calibrated by one pass); embeddings of the
  frozen random backbone; accuracy of a linear head trained on it with the same labels.
- ``scratch``: the same architecture trained from random init on the same labels with the same
  protocol; its embeddings and accuracy.
Stages whose outputs already exist are reused, so a killed run picks up where it stopped.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ._io import atomic_path, write_bytes, write_json
from .config import load_config
from .data import NAMED_DATASETS, open_dataset
from .embed import extract_embeddings, load_embeddings
from .evaluate import evaluate
from .finetune import evaluate_classifier, finetune
from .index import build_index, search_index
from .pretrain import pretrain
from .viz import save_filters

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
VARIANTS = ("hebbian", "random", "scratch")


@dataclass
class RunConfig:
    """Everything `hebbret run` does, in one place."""

    data: str = "fashion-mnist-mini"  # named dataset with train/test splits, or DIR/{train,test}
    data_root: str | None = None  # files of a named dataset
    model: str = "hebb_softhebb_c3"
    rule: str | None = None  # None: the backbone's default Hebbian rule
    pretrain_epochs: int | None = None  # None: the backbone's default
    pretrain_batch_size: int | None = None
    in_chans: int | None = None
    img_size: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    labels_per_class: int | None = 20  # the few labels (or label_fraction)
    label_fraction: float | None = None
    finetune_epochs: int = 20
    finetune_lr: float = 1e-3
    finetune_batch_size: int = 64
    augment: bool = False
    knn_k: int = 20
    retrieval_k: int = 100
    linear_epochs: int = 20
    embed_batch_size: int = 256
    queries_shown: int = 6  # rows of retrieval.png
    out: str = "runs/hebbret-run"
    seed: int = 0
    device: str = "auto"
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.label_fraction is not None:  # a fraction replaces the per-class default
            self.labels_per_class = None


def load_run_config(name_or_path: str | None = None, **overrides: Any) -> RunConfig:
    """A shipped config by name (default, fashion-mnist, cifar10) or a user's TOML file."""
    name = name_or_path or "default"
    path = Path(name)
    if not path.suffix:
        path = CONFIG_DIR / f"{name}.toml"
        if not path.is_file():
            shipped = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
            raise ValueError(f"no shipped config named {name!r}; choose one of {shipped} or "
                             f"give a .toml file")
    return load_config(RunConfig, path, section="run", **overrides)


def _source(cfg: RunConfig, split: str) -> tuple[str, str]:
    """(data source, split) of a split: named datasets take the split, folders a sub-folder.

    A data name that is not a named dataset with ``data_root`` set means the folder data_root.
    """
    folder = cfg.data_root if cfg.data not in NAMED_DATASETS and cfg.data_root else cfg.data
    if Path(folder).is_dir():
        sub = Path(folder) / split
        if not sub.is_dir():
            raise FileNotFoundError(f"{folder} must hold {split}/ (labeled class folders) for "
                                    f"`hebbret run`")
        return str(sub), split
    if cfg.data not in NAMED_DATASETS:
        raise FileNotFoundError(f"data not found: {folder} is neither a folder with train/ and "
                                f"test/ nor a named dataset ({', '.join(NAMED_DATASETS)})")
    return cfg.data, split


def run_pipeline(cfg: RunConfig) -> dict[str, Any]:
    """Run every stage for every variant; write ``OUT/report/``; return the results."""
    out = Path(cfg.out)
    (out / "report").mkdir(parents=True, exist_ok=True)
    write_json(out / "report" / "config.json", asdict(cfg))
    train, test = _source(cfg, "train"), _source(cfg, "test")
    rows = {v: _run_variant(cfg, v, out, train, test) for v in VARIANTS}
    results = {"config": asdict(cfg), "rows": rows, "definitions": __doc__.split("Rows")[1]}
    report = out / "report"
    write_json(report / "results.json", results)
    write_bytes(report / "results.md", results_table(results).encode())
    save_filters(out / "hebbian" / "pretrain", report / "filters.png")
    _retrieval_picture(cfg, out / "hebbian" / "index", out / "hebbian" / "emb_test", train, test,
                       report / "retrieval.png")
    return results


def _done(d: Path) -> bool:
    return (d / "model.json").exists() or (d / "meta.json").exists()


@contextlib.contextmanager
def _timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - t0, 1)


def _run_variant(cfg: RunConfig, variant: str, out: Path, train: tuple[str, str],
                 test: tuple[str, str]) -> dict[str, Any]:
    """One row of the report; stages with finished outputs are skipped (and not timed)."""
    base, secs = out / variant, {}
    common = dict(device=cfg.device, quiet=cfg.quiet)
    backbone = base / "pretrain"
    if variant != "scratch" and not _done(backbone):
        with _timed(secs, "pretrain"):
            pretrain(train[0], split=train[1], data_root=cfg.data_root, model=cfg.model,
                     rule="none" if variant == "random" else cfg.rule,
                     epochs=1 if variant == "random" else cfg.pretrain_epochs,
                     batch_size=cfg.pretrain_batch_size, in_chans=cfg.in_chans,
                     img_size=cfg.img_size, model_kwargs=cfg.model_kwargs, seed=cfg.seed,
                     out=str(backbone), resume=(backbone / "state.pt").exists(), **common)
    tuned = base / "finetune"
    if not _done(tuned):
        with _timed(secs, "finetune"):
            # from scratch: the Hebbian run's architecture with fresh weights
            finetune(run=str(out / "hebbian" / "pretrain" if variant == "scratch" else backbone),
                     data=train[0], split=train[1], data_root=cfg.data_root,
                     labels_per_class=cfg.labels_per_class, label_fraction=cfg.label_fraction,
                     mode="linear" if variant == "random" else "full",
                     from_scratch=variant == "scratch", epochs=cfg.finetune_epochs,
                     lr=cfg.finetune_lr, batch_size=cfg.finetune_batch_size, augment=cfg.augment,
                     seed=cfg.seed, out=str(tuned), **common)
    if variant == "scratch":
        backbone = tuned
    with _timed(secs, "test"):
        accuracy = evaluate_classifier(tuned, test[0], test[1], cfg.data_root, device=cfg.device)
    embs = {}
    for name, (source, split) in (("train", train), ("test", test)):
        embs[name] = base / f"emb_{name}"
        if not _done(embs[name]):
            with _timed(secs, "embed"):
                extract_embeddings(backbone, source, embs[name], split=split,
                                   data_root=cfg.data_root, batch_size=cfg.embed_batch_size,
                                   **common)
    if not _done(base / "index"):
        with _timed(secs, "index"):
            build_index(embs["train"], base / "index")
    with _timed(secs, "eval"):
        knn = evaluate("knn", str(embs["train"]), str(embs["test"]), ks=[cfg.knn_k])
        lin = evaluate("linear", str(embs["train"]), str(embs["test"]), epochs=cfg.linear_epochs,
                       seed=cfg.seed)
        ret = evaluate("retrieval", str(embs["train"]), str(embs["test"]),
                       ks=[1, cfg.retrieval_k])
    k = max(knn["k"])  # k capped at the database size
    row = {"finetuned_top1": accuracy["top1"], "knn_top1": knn["k"][k]["top1"],
           "linear_top1": lin["top1"], "linear_weight_decay": lin["weight_decay"],
           "mAP": ret["mAP"], f"P@{cfg.retrieval_k}": ret["P@k"][max(ret["P@k"])],
           "Recall@1": ret["Recall@k"][1], "seconds": secs}
    log.info("%s: %s", variant, row)
    return row


def results_table(results: dict[str, Any]) -> str:
    cfg = results["config"]
    k, rk = cfg["knn_k"], cfg["retrieval_k"]
    labels = (f"{cfg['labels_per_class']} labels per class" if cfg["labels_per_class"]
              else f"{cfg['label_fraction']:.0%} of the labels")
    lines = [f"`hebbret run` on {cfg['data']} with {cfg['model']} ({labels})", "",
             f"| variant | fine-tuned test top-1 | kNN top-1 (k={k}) | linear-probe top-1 | "
             f"mAP | P@{rk} | pretrain s | finetune s | embed s | eval s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["rows"].items():
        s = r["seconds"]
        lines.append(f"| {name} | {r['finetuned_top1']:.2f} | {r['knn_top1']:.2f} | "
                     f"{r['linear_top1']:.2f} | {r['mAP']:.2f} | {r[f'P@{rk}']:.2f} | "
                     f"{s.get('pretrain', 0):.0f} | {s.get('finetune', 0):.0f} | "
                     f"{s.get('embed', 0):.0f} | {s.get('eval', 0):.0f} |")
    return "\n".join(lines) + "\n"


def _retrieval_picture(cfg: RunConfig, index_dir: Path, test_emb: Path, train: tuple[str, str],
                       test: tuple[str, str], out: Path, top: int = 8, scale: int = 3) -> None:
    """Rows of: a test query, then its top-``top`` database images framed green (same class)
    or red (other class)."""
    db = open_dataset(train[0], train[1], data_root=cfg.data_root, img_size=cfg.img_size or 32)
    qs = open_dataset(test[0], test[1], data_root=cfg.data_root, img_size=cfg.img_size or 32)
    emb, items, _ = load_embeddings(test_emb)
    rng = np.random.default_rng(cfg.seed)
    picks = np.sort(rng.permutation(len(items))[: cfg.queries_shown])
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
