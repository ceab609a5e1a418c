"""The main job: pretrain -> embed -> index -> evaluate with all labels and with few labels, for a
Hebbian backbone against the same network with random weights, ending in one report.

Backbones of the report:
- ``hebbian``: Hebbian pretraining on the unlabeled train split.
- ``random``: the same network with random weights (BatchNorm statistics calibrated by one
  pass over the train split).
With all labels, each backbone's frozen features are scored by kNN, a linear probe and retrieval
(train = database, test = queries). With few labels, every protocol of :mod:`hebbret.fewshot`
(knn, linear, propagate on frozen features; full = end-to-end fine-tuning) runs on the same
seeded, class-balanced labeled subsets; ``full`` on the random backbone is training from scratch.
Stages whose outputs already exist are reused, so a killed run picks up where it stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ._io import atomic_path, read_json, write_bytes, write_json
from .config import load_config
from .data import NAMED_DATASETS, open_dataset, scan_image_folder
from .embed import extract_embeddings, load_embeddings
from .evaluate import evaluate
from .fewshot import PROTOCOLS, FewShotConfig, evaluate_embeddings, evaluate_full
from .index import build_index, search_index
from .pretraining import pretrain
from .runs import read_card
from .viz import save_convergence, save_filters

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
VARIANTS = ("hebbian", "random")
BACKBONE_NAMES = {"hebbian": "Hebbian", "random": "random init"}


@dataclass
class RunConfig:
    """Everything `hebbret run` does, in one place."""

    data: str = "fashion-mnist-mini"  # named dataset with train/test splits, or DIR/{train,test}
    data_root: str | None = None  # files of a named dataset
    model: str = "hebb_softhebb_c3"
    rule: str | None = None  # None: the backbone's default Hebbian rule
    pretrain_epochs: int | None = None  # None: the backbone's default
    pretrain_steps: int | None = None  # Hebbian steps (instead of epochs); None: default budget
    pretrain_batch_size: int | None = None
    pretrain_lr: list[float] | None = None  # one per Hebbian layer or one for all; None: default
    in_chans: int | None = None
    img_size: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    labels_per_class: int | None = 20  # the few labels (or label_fraction)
    label_fraction: float | None = None
    protocols: list[str] = field(default_factory=lambda: list(PROTOCOLS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # labeled subsets
    finetune_epochs: int = 20
    finetune_lr: float = 1e-3
    backbone_lr_scale: float = 1.0  # full: the backbone learns at finetune_lr × this
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
        if isinstance(self.pretrain_lr, (int, float)):
            self.pretrain_lr = [float(self.pretrain_lr)]
        FewShotConfig(protocols=self.protocols, labels_per_class=self.labels_per_class,
                      label_fraction=self.label_fraction, seeds=self.seeds)  # validates


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


TEST_FRACTION = 0.2  # a single labeled folder: this share of every class becomes the test set


def split_folder(folder: str | os.PathLike, out: str | os.PathLike, seed: int = 0,
                 test_fraction: float = TEST_FRACTION) -> dict[str, Any]:
    """Split a labeled folder into ``out/train`` and ``out/test`` (symlinks to its files):
    a seeded, class-stratified ``test_fraction`` of every class with ≥ 2 images is test.
    Reused when ``out/split.json`` records the same folder, seed, fraction and listing.
    Returns that record."""
    items, classes = scan_image_folder(folder, labeled=None)
    if not classes:
        raise ValueError(f"{folder} has no class sub-folders and no train/ and test/: `hebbret "
                         f"run` needs labels to evaluate (ROOT/<class>/<image>)")
    if len(classes) < 2:
        raise ValueError(f"{folder} holds one class ({classes[0]}); evaluation needs at least 2")
    root = Path(folder).resolve()
    out = Path(out)
    record = {"source": str(root), "seed": seed, "test_fraction": test_fraction,
              "listing": [it.path for it in items]}
    if (out / "split.json").exists() and {k: v for k, v in read_json(out / "split.json").items()
                                          if k in record} == record:
        return read_json(out / "split.json")
    labels = np.array([it.label for it in items])
    rng = np.random.default_rng(seed)
    test = set()
    for c in range(len(classes)):
        rows = np.flatnonzero(labels == c)
        n = min(len(rows) - 1, round(test_fraction * len(rows)))
        test.update(rng.permutation(rows)[:max(n, 1 if len(rows) > 1 else 0)].tolist())
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for i, it in enumerate(items):
        dest = tmp / ("test" if i in test else "train") / it.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.symlink_to(root / it.path)
    record.update({"train": len(items) - len(test), "test": len(test), "classes": classes})
    write_json(tmp / "split.json", record)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    log.info("split %s: %d train / %d test images (%.0f%% of every class, seed %d) in %s",
             root, record["train"], record["test"], 100 * test_fraction, seed, out)
    return record


def resolve_data(cfg: RunConfig, out: Path) -> tuple[tuple[str, str], tuple[str, str],
                                                      dict[str, Any] | None]:
    """(train source, split), (test source, split) and the split record of a single folder.

    ``cfg.data``: a named dataset (its train/test splits), a folder with train/ and test/, or
    one labeled folder (split by :func:`split_folder` into ``OUT/data``). A data name that is
    not a named dataset with ``data_root`` set means the folder data_root.
    """
    if cfg.data in NAMED_DATASETS:
        if cfg.data == "fashion-mnist-mini" and cfg.data_root:
            raise ValueError(f"--data-root {cfg.data_root} is not used by {cfg.data} (shipped "
                             f"inside hebbret); to run on your folder: hebbret run "
                             f"{cfg.data_root}")
        return (cfg.data, "train"), (cfg.data, "test"), None
    folder = Path(cfg.data_root or cfg.data)
    if not folder.is_dir():
        raise FileNotFoundError(f"data not found: {folder} is neither a folder nor a named "
                                f"dataset ({', '.join(NAMED_DATASETS)})")
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        return (str(folder / "train"), "train"), (str(folder / "test"), "test"), None
    if (folder / "train").is_dir() or (folder / "test").is_dir():
        have = "train" if (folder / "train").is_dir() else "test"
        raise FileNotFoundError(f"{folder} has {have}/ but not "
                                f"{'test' if have == 'train' else 'train'}/; give both, or one "
                                f"labeled folder to be split")
    split = split_folder(folder, out / "data", cfg.seed)
    return ((str(out / "data" / "train"), "train"), (str(out / "data" / "test"), "test"),
            {k: v for k, v in split.items() if k != "listing"})


def run_pipeline(cfg: RunConfig) -> dict[str, Any]:
    """Run every stage for every backbone; write ``OUT/report/``; return the results."""
    out = Path(cfg.out)
    (out / "report").mkdir(parents=True, exist_ok=True)
    write_json(out / "report" / "config.json", asdict(cfg))
    train, test, split = resolve_data(cfg, out)
    rows = {v: _run_variant(cfg, v, out, train, test) for v in VARIANTS}
    results = {"config": asdict(cfg), "rows": rows, "definitions": __doc__.split("Backbones")[1],
               "data": {"train": train[0], "test": test[0], "split": split},
               "verdict": verdict(rows)}
    report = out / "report"
    write_json(report / "results.json", results)
    write_bytes(report / "results.md", results_table(results).encode())
    save_filters(out / "hebbian" / "pretrain", report / "filters.png")
    save_convergence(out / "hebbian" / "pretrain", report / "convergence.png")
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
    """One backbone of the report; stages with finished outputs are skipped (and not timed)."""
    base, secs = out / variant, {}
    common = dict(device=cfg.device, quiet=cfg.quiet)
    backbone = base / "pretrain"
    if not _done(backbone):
        with _timed(secs, "pretrain"):
            hebbian = variant == "hebbian"
            pretrain(train[0], split=train[1], data_root=cfg.data_root, model=cfg.model,
                     rule=cfg.rule if hebbian else "none",
                     epochs=cfg.pretrain_epochs if hebbian else 1,
                     steps=cfg.pretrain_steps if hebbian else None,
                     lr=cfg.pretrain_lr if hebbian else None,
                     batch_size=cfg.pretrain_batch_size if hebbian else None,
                     in_chans=cfg.in_chans,
                     img_size=cfg.img_size, model_kwargs=cfg.model_kwargs, seed=cfg.seed,
                     out=str(backbone), resume=(backbone / "state.pt").exists(), **common)
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
    with _timed(secs, "fewshot"):
        fewshot = _fewshot(cfg, base, backbone, embs, train, test)
    k = max(knn["k"])  # k capped at the database size
    row = {"knn_top1": knn["k"][k]["top1"], "linear_top1": lin["top1"],
           "linear_weight_decay": lin["weight_decay"], "mAP": ret["mAP"],
           f"P@{cfg.retrieval_k}": ret["P@k"][max(ret["P@k"])], "Recall@1": ret["Recall@k"][1],
           "fewshot": fewshot, "seconds": secs}
    card = read_card(backbone).training
    if "convergence" in card and variant == "hebbian":
        row["convergence"] = card["convergence"]
        row["pretrain_steps"] = card["steps"]
    log.info("%s: %s", variant, {k: v for k, v in row.items() if k != "fewshot"})
    return row


def _fewshot(cfg: RunConfig, base: Path, backbone: Path, embs: dict[str, Path],
             train: tuple[str, str], test: tuple[str, str]) -> dict[str, Any]:
    """Every few-label protocol on this backbone: {protocol: summary of test top-1 over seeds}."""
    fcfg = FewShotConfig(protocols=cfg.protocols, labels_per_class=cfg.labels_per_class,
                         label_fraction=cfg.label_fraction, seeds=cfg.seeds, knn_k=cfg.knn_k)
    results = evaluate_embeddings(embs["train"], embs["test"], fcfg)
    if "full" in cfg.protocols:
        results["full"] = evaluate_full(
            backbone, train[0], test[0], base, fcfg, train[1], test[1], cfg.data_root,
            dict(epochs=cfg.finetune_epochs, lr=cfg.finetune_lr,
                 backbone_lr_scale=cfg.backbone_lr_scale, batch_size=cfg.finetune_batch_size,
                 augment=cfg.augment), cfg.device, cfg.quiet)
    return {p: results[p]["top1"] for p in cfg.protocols}


def verdict(rows: dict[str, dict[str, Any]]) -> str:
    """One sentence: which backbone + protocol wins with few labels, and by how much."""
    def best(variant: str) -> tuple[str, dict[str, Any]]:
        return max(rows[variant]["fewshot"].items(), key=lambda ps: ps[1]["mean"])

    def fmt(s: dict[str, Any]) -> str:
        return f"{s['mean']:.2f} ± {s['std']:.2f}"

    hp, hs = best("hebbian")
    rp, rs = best("random")
    gap = hs["mean"] - rs["mean"]
    scratch = rows["random"]["fewshot"].get("full")
    vs_scratch = (f"; training from scratch (random init + full) gets {fmt(scratch)} "
                  f"({hs['mean'] - scratch['mean']:+.2f})" if scratch else
                  "; training from scratch was not run (add the protocol full)")
    same = rows["random"]["fewshot"].get(hp)
    vs_same = (f"; the same protocol on random init gets {fmt(same)} ({hs['mean'] - same['mean']:+.2f})"
               if same else "")
    if gap > 0:
        return (f"With few labels the best is Hebbian + {hp} ({fmt(hs)} %), {gap:.2f} points above "
                f"the best on random init ({rp}, {fmt(rs)} %){vs_same}{vs_scratch}.")
    return (f"With few labels Hebbian pretraining does not pay off here: the best is random init + "
            f"{rp} ({fmt(rs)} %), {-gap:.2f} points above the best Hebbian protocol ({hp}, "
            f"{fmt(hs)} %){vs_scratch}.")


def results_table(results: dict[str, Any]) -> str:
    cfg = results["config"]
    k, rk = cfg["knn_k"], cfg["retrieval_k"]
    labels = (f"{cfg['labels_per_class']} labels per class" if cfg["labels_per_class"]
              else f"{cfg['label_fraction']:.0%} of the labels")
    rows = results["rows"]
    protocols = cfg["protocols"]
    n_seeds = len(cfg["seeds"])
    split = results.get("data", {}).get("split")
    data = (f"{split['source']} (split for this run: {split['train']} train / {split['test']} "
            f"test images, {split['test_fraction']:.0%} of every class, seed {split['seed']})"
            if split else cfg["data_root"] or cfg["data"])
    lines = [f"`hebbret run` on {data} with {cfg['model']}", "",
             f"**Few labels** ({labels}; test top-1 %, mean ± std over {n_seeds} labeled subsets; "
             f"full on random init = training from scratch)", "",
             "| backbone | " + " | ".join(protocols) + " |",
             "|---|" + "---:|" * len(protocols)]
    for name, r in rows.items():
        cells = [f"{r['fewshot'][p]['mean']:.2f} ± {r['fewshot'][p]['std']:.2f}"
                 for p in protocols]
        lines.append(f"| {BACKBONE_NAMES.get(name, name)} | " + " | ".join(cells) + " |")
    lines += ["", results["verdict"], "",
              "**All labels** (frozen features; train = database, test = queries)", "",
              f"| backbone | kNN top-1 (k={k}) | linear-probe top-1 | mAP | P@{rk} | Recall@1 | "
              f"pretrain s | embed s | eval s | few-label s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        s = r["seconds"]
        lines.append(f"| {BACKBONE_NAMES.get(name, name)} | {r['knn_top1']:.2f} | "
                     f"{r['linear_top1']:.2f} | {r['mAP']:.2f} | {r[f'P@{rk}']:.2f} | "
                     f"{r['Recall@1']:.2f} | {s.get('pretrain', 0):.0f} | {s.get('embed', 0):.0f} | "
                     f"{s.get('eval', 0):.0f} | {s.get('fewshot', 0):.0f} |")
    conv = rows.get("hebbian", {}).get("convergence")
    if conv:
        cells = [f"layer {la['layer']} {la['distance']:.3g} (≤ {la['converged_below']:g}: "
                 f"{'yes' if la['converged'] else 'NO'})" for la in conv["layers"]
                 if la["distance"] is not None]
        measure = "; ".join(sorted({la["measure"] for la in conv["layers"]}))
        lines += ["", f"**Convergence** of the Hebbian backbone after {rows['hebbian']['pretrain_steps']}"
                  f" steps ({measure}): " + ", ".join(cells) + "."]
    return "\n".join(lines) + "\n"


def _retrieval_picture(cfg: RunConfig, index_dir: Path, test_emb: Path, train: tuple[str, str],
                       test: tuple[str, str], out: Path, top: int = 8, scale: int = 3) -> None:
    """Rows of: a test query, then its top-``top`` database images framed green (same class)
    or red (other class)."""
    db = open_dataset(train[0], train[1], data_root=cfg.data_root, img_size=cfg.img_size or 32,
                      cache=False)
    qs = open_dataset(test[0], test[1], data_root=cfg.data_root, img_size=cfg.img_size or 32,
                      cache=False)
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
