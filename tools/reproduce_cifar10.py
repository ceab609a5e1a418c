"""Reproduce the Hebbian bars on CIFAR-10 with hebbret's own library calls.

    python tools/reproduce_cifar10.py DATA_ROOT [--stage softhebb retrieval few-labels layers speed]

DATA_ROOT holds ``train/<class>/`` and ``test/<class>/`` (or ``cifar10/train`` ...), the layout of
``cifar10-jpeg.tar.gz``. Stages:

- ``softhebb``: hebb_softhebb_c3, 1 Hebbian epoch (rule softhebb, batch 10), frozen flattened
  features cached as float16, SoftHebb's linear readout; the same on the random-init network.
- ``retrieval``: kNN and retrieval metrics on those features (train = database, test =
  queries), in 24,576-d and after PCA to 256-d (a FAISS ``PCA256,L2norm,Flat`` index whose
  PCA is fitted in torch; L2norm so that the index ranks exactly as the cosine metrics do).
- ``few-labels``: FastHebb's semi-supervised protocol (``finetune --mode full``) at 1/5/10% of
  the labels, 3 seeds, Hebbian-pretrained vs from scratch.
- ``protocols``: the frozen-feature few-label protocols of ``hebbret fewshot`` (knn, linear,
  propagate over a FAISS kNN graph of all 50,000 training images) on the stage-1 features,
  Hebbian and random init, at the same budgets and on the same labeled subsets.
- ``layers``: per-layer kNN and linear-probe top-1 of hebb_fasthebb_6l (hpca, swta).
- ``speed``: a full Hebbian epoch with bf16 autocast (+ its readout, to check accuracy), and
  fp32 Hebbian / bf16 Hebbian / backprop step rates interleaved in one process, projected to
  an epoch; the fp32 epoch itself is the ``softhebb`` stage's run.

Every finished unit of work is merged into ``--results`` (JSON) at once, with the command line,
git commit, machine and wall times, and is skipped when it is already there: the stages can be
completed across several runs (``--force`` redoes a stage, replacing each result as its new
one is written). ``--budgets``, ``--seeds`` and
``--archs`` narrow the few-label cells a session runs; ``--skip ARCH/BUDGET`` records a cell as
too slow for this CPU. The README's Results section is rewritten from the JSON after each stage
(``--readme-only`` just rewrites it).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

import hebbret
from hebbret._io import atomic_path, read_json, write_json
from hebbret.embed import extract_embeddings, load_embeddings
from hebbret.evaluate import (
    aligned_labels,
    cosine_blocks,
    evaluate_classifier,
    knn_classify,
    linear_probe,
    retrieval_metrics,
    softhebb_readout,
)
from hebbret.index import build_index, load_index, search_index

log = logging.getLogger("reproduce_cifar10")
REPO = Path(__file__).resolve().parent.parent
STAGES = ("softhebb", "retrieval", "few-labels", "protocols", "variants", "layers", "speed")
# Anchors measured on this machine with SoftHebb's own published demo (issue 5).
ANCHOR = {"hebbian_epoch_s": 933.0, "embed_60k_s": 469.0, "readout_top1": 76.97,
          "paper_top1": 80.3}


@dataclass
class Settings:
    """The protocol; the defaults are the published ones, the smoke test shrinks them."""

    c3_kwargs: dict = field(default_factory=dict)  # backbone arguments (smoke test: narrow)
    sixl_kwargs: dict = field(default_factory=dict)
    readout_epochs: int = 50
    readout_seeds: tuple[int, ...] = (0, 1, 2)
    budgets: tuple[float, ...] = (0.01, 0.05, 0.10)
    seeds: tuple[int, ...] = (0, 1, 2)
    finetune_epochs: int = 20
    sixl_epochs: int = 1  # Hebbian epochs of hebb_fasthebb_6l
    knn_k: int = 20
    pca_dim: int = 256
    linear_epochs: int = 20  # logistic-regression probe of the per-layer table
    embed_batch: int = 256
    speed_steps: int = 200  # batches per round of the interleaved step-rate measurement
    skip: tuple[str, ...] = ()  # few-label cells not to run ("c3-scratch/0.1"): "too slow"
    archs: tuple[str, ...] = ()  # few-label rows to run now (default: all of FEW_LABEL_ARCHS)


class Results:
    """``tools/results/cifar10.json``: merged stage results, rewritten atomically per update."""

    def __init__(self, path: Path, argv: list[str]) -> None:
        self.path = path
        self.doc = read_json(path) if path.exists() else {"dataset": "CIFAR-10 (JPEG q75 copy)",
                                                           "stages": {}}
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=REPO).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":!tools/results", ":!README.md"],  # this script's own outputs
                               capture_output=True, text=True, cwd=REPO).stdout.strip()
        self.redo: set[str] = set()
        self.fresh: dict[str, set[str]] = {}
        self.provenance = {"command": " ".join(["python", "tools/reproduce_cifar10.py", *argv]),
                           "git_commit": commit + ("+dirty" if dirty else ""),
                           "machine": machine(), "hebbret_version": hebbret.__version__,
                           "torch": torch.__version__}

    def get(self, stage: str, key: str) -> Any:
        if stage in self.redo and key not in self.fresh.get(stage, set()):
            return None
        return self.doc["stages"].get(stage, {}).get(key)

    def put(self, stage: str, key: str, value: dict[str, Any]) -> None:
        entry = {**value, **self.provenance,
                 "finished": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
        self.doc["stages"].setdefault(stage, {})[key] = entry
        self.fresh.setdefault(stage, set()).add(key)
        write_json(self.path, self.doc)

    def force(self, stage: str) -> None:
        """Redo ``stage``: its finished results count as missing, but each stays in the file
        until its replacement is written (a killed redo loses nothing)."""
        self.redo.add(stage)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, {platform.system()} {platform.release()}"


def timed(fn: Callable, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, round(time.perf_counter() - t0, 2)


def complete(run: Path) -> bool:
    return (run / "model.json").exists()


def pretrain_once(run: Path, data: Path, **kwargs: Any) -> dict[str, Any]:
    """Hebbian-pretrain into ``run`` unless it is complete; resumes a killed run. The timings
    are kept beside the run (``pretrain.json``), so a later stage reusing it reports them."""
    timings = run.parent / "pretrain.json"
    if complete(run):
        if timings.exists():
            return {**read_json(timings), "reused": True}
        card = read_json(run / "model.json")
        return {"reused": True, "train_seconds": card["training"]["train_seconds"]}
    _, wall = timed(hebbret.pretrain, str(data / "train"), out=str(run), img_size=32, quiet=True,
                    resume=(run / "state.pt").exists(), **kwargs)
    card = read_json(run / "model.json")
    info = {"reused": False, "wall_s": wall, "train_seconds": card["training"]["train_seconds"],
            "images": card["training"]["images_seen"],
            "skipped_files": len(card["training"]["skipped_files"]),
            # > the thread count: something else shared the CPU and the times are inflated
            "load_avg_15m_at_end": round(os.getloadavg()[2], 2)}
    write_json(timings, info)
    return info


def embed_once(run: Path, data: Path, out: Path, settings: Settings, **kwargs: Any) -> float | None:
    """Embed ``data`` into ``out`` unless complete; returns the wall time or None if reused."""
    if (out / "meta.json").exists():
        return None
    _, wall = timed(extract_embeddings, run, str(data), out, quiet=True,
                    batch_size=settings.embed_batch, **kwargs)
    return wall


def labels_of(train_dir: Path, test_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                         np.ndarray]:
    x_train, items_train, meta_train = load_embeddings(train_dir)
    x_test, items_test, meta_test = load_embeddings(test_dir)
    y_train = np.array([it["label"] for it in items_train])
    y_test = aligned_labels(items_test, meta_test["classes"], meta_train["classes"], str(test_dir))
    return x_train, y_train, x_test, y_test


# ---------------------------------------------------------------- stage 1: SoftHebb protocol
C3_VARIANTS = {"hebbian": "softhebb", "random": "none"}
# Changes to the Hebbian recipe tried against the stage-1 run: (what it changes, model kwargs)
LIFT_VARIANTS = {
    "init-radius-5": ("neurons start at norm 5 instead of SoftHebb's 25 (the embedded default's "
                      "choice for small collections)", {"init_radius": 5.0}),
}


def c3_features(work: Path, data: Path, variant: str, settings: Settings,
                precision: str = "fp32") -> tuple[Path, dict[str, Any]]:
    """Pretrain (or reuse) a c3 run and its cached float16 train/test features; ``variant``:
    hebbian, random or a LIFT_VARIANTS name."""
    name = f"c3-{variant}" + ("" if precision == "fp32" else f"-{precision}")
    run = work / name / "run"
    lift = LIFT_VARIANTS.get(variant, ("", {}))[1]
    info = pretrain_once(run, data, model="hebb_softhebb_c3",
                         rule=C3_VARIANTS.get(variant, "softhebb"),
                         model_kwargs={**settings.c3_kwargs, **lift}, epochs=1,  # SoftHebb: 1
                         **({} if precision == "fp32" else {"precision": precision}))
    for split in ("train", "test"):
        wall = embed_once(run, data / split, work / name / f"emb_{split}", settings,
                          dtype="float16")
        if wall is not None:
            info[f"embed_{split}_s"] = wall
            write_json(run.parent / "pretrain.json", {k: v for k, v in info.items()
                                                      if k != "reused"})
    return work / name, info


def stage_softhebb(work: Path, data: Path, res: Results, settings: Settings) -> None:
    for variant in C3_VARIANTS:
        if res.get("softhebb", variant):
            log.info("softhebb/%s: already in results", variant)
            continue
        root, info = c3_features(work, data, variant, settings)
        x_train, y_train, x_test, y_test = labels_of(root / "emb_train", root / "emb_test")
        readouts, walls = {}, []
        for seed in settings.readout_seeds:
            readouts[seed], wall = timed(softhebb_readout, x_train, y_train, x_test, y_test,
                                         epochs=settings.readout_epochs, seed=seed)
            walls.append(wall)
            log.info("softhebb/%s: readout seed %d top-1 %.2f", variant, seed,
                     readouts[seed]["top1"])
        top1 = [r["top1"] for r in readouts.values()]
        first = next(iter(readouts.values()))
        card = read_json(root / "run" / "model.json")["training"]
        row = {"rule": C3_VARIANTS[variant], "model": "hebb_softhebb_c3", "dim": x_train.shape[1],
               **info, "readout_top1": round(statistics.mean(top1), 2),
               "readout_top1_std": round(statistics.stdev(top1), 2) if len(top1) > 1 else None,
               "readout_seeds": {s: {"top1": r["top1"], "top5": r["top5"]}
                                 for s, r in readouts.items()},
               "readout": {k: v for k, v in first.items() if k not in ("top1", "top5")},
               "readout_s": walls, "convergence": card.get("convergence"),
               "steps_per_phase": card.get("steps_per_phase")}
        if variant == "hebbian" and "wall_s" in info:
            row["images_per_s"] = round(row["images"] / row["wall_s"], 1)
        res.put("softhebb", variant, row)
        log.info("softhebb/%s: readout top-1 %s", variant, top1)


# ---------------------------------------------------------------- stage 2: retrieval and kNN
def retrieval_row(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                  y_test: np.ndarray, settings: Settings) -> dict[str, Any]:
    knn, knn_s = timed(knn_classify, x_train, y_train, x_test, y_test, ks=[settings.knn_k],
                       temperature=0.07)
    ret, ret_s = timed(retrieval_metrics, x_train, y_train, x_test, y_test, ks=[1, 100])
    return {"dim": int(x_train.shape[1]), "knn_top1": knn["k"][settings.knn_k]["top1"],
            "knn_top5": knn["k"][settings.knn_k]["top5"], "knn_k": settings.knn_k,
            "knn_temperature": 0.07, "mAP": ret["mAP"], "mAP@100": ret["mAP@k"][100],
            "P@100": ret["P@k"][100], "Recall@1": ret["Recall@k"][1], "knn_s": knn_s,
            "retrieval_s": ret_s}


def pca_vectors(index_dir: Path, x: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Apply the index's L2 normalisation and PCA to ``x`` (N, D) -> float32 (N, d)."""
    index, _, meta = load_index(index_dir)
    pca = faiss.downcast_VectorTransform(faiss.downcast_index(index).chain.at(0))
    parts = []
    for i in range(0, len(x), chunk):
        xb = np.array(x[i: i + chunk], dtype=np.float32)
        if meta["normalization"] == "l2":
            faiss.normalize_L2(xb)
        parts.append(pca.apply(xb))
    return np.concatenate(parts)


def stage_retrieval(work: Path, data: Path, res: Results, settings: Settings) -> None:
    factory = f"PCA{settings.pca_dim},L2norm,Flat"
    for variant in C3_VARIANTS:
        root = work / f"c3-{variant}"
        if not (root / "emb_test" / "meta.json").exists():
            raise FileNotFoundError(f"{root} has no cached features; run --stage softhebb first")
        x_train, y_train, x_test, y_test = labels_of(root / "emb_train", root / "emb_test")
        if not res.get("retrieval", variant):
            res.put("retrieval", variant, retrieval_row(x_train, y_train, x_test, y_test, settings))
            log.info("retrieval/%s: %s", variant, res.get("retrieval", variant))
        key = f"{variant}-pca{settings.pca_dim}"
        if res.get("retrieval", key):
            continue
        index_dir = root / f"index_pca{settings.pca_dim}"
        _, build_s = timed(build_index, root / "emb_train", index_dir, factory=factory)
        z_train, z_test = pca_vectors(index_dir, x_train), pca_vectors(index_dir, x_test)
        row = retrieval_row(z_train, y_train, z_test, y_test, settings)
        # the index answers queries as the metrics rank them: compare its top 10 on 500 queries
        probe = np.arange(min(500, len(x_test)))
        _, ids, _, _ = search_index(index_dir, np.asarray(x_test[probe], dtype=np.float32), k=10)
        exact = next(cosine_blocks(z_test[probe], z_train))[1].topk(10, dim=1).indices.numpy()
        agree = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact, strict=True)]))
        meta = read_json(index_dir / "meta.json")
        row.update({"factory": factory, "index_build_s": build_s,
                    "recall_at_10_vs_full_dim": meta["recall_at_10_vs_flat"],
                    "index_vs_metric_top10_agreement": agree})
        res.put("retrieval", key, row)
        log.info("retrieval/%s: %s", key, row)


# ---------------------------------------------------------------- stage 3: few labels
FEW_LABEL_ARCHS = {  # name -> (backbone, Hebbian rule); "scratch" rows reuse the architecture
    "6l-hpca": ("hebb_fasthebb_6l", "hpca"),
    "6l-swta": ("hebb_fasthebb_6l", "swta"),
    "c3-softhebb": ("hebb_softhebb_c3", "softhebb"),
    "6l-scratch": ("hebb_fasthebb_6l", None),
    "c3-scratch": ("hebb_softhebb_c3", None),
}


def hebbian_run(work: Path, data: Path, arch: str, settings: Settings) -> Path:
    """The Hebbian-pretrained run behind a few-label row (scratch rows: its architecture)."""
    model, rule = FEW_LABEL_ARCHS[arch]
    if model == "hebb_softhebb_c3":
        c3_features(work, data, "hebbian", settings)
        return work / "c3-hebbian" / "run"
    rule = rule or "hpca"
    run = work / f"6l-{rule}" / "run"
    pretrain_once(run, data, model=model, rule=rule, epochs=settings.sixl_epochs,
                  model_kwargs=settings.sixl_kwargs)
    return run


def stage_few_labels(work: Path, data: Path, res: Results, settings: Settings) -> None:
    # cheapest cells first (c3 costs ~8x the 6l per image), so a partial run covers most
    # (architecture, budget) pairs; each finished run is in the JSON at once
    cells = sorted(((budget * (8 if arch.startswith("c3") else 1), budget, arch)
                    for budget in settings.budgets
                    for arch in (settings.archs or FEW_LABEL_ARCHS)),
                   key=lambda c: (c[0], c[1], list(FEW_LABEL_ARCHS).index(c[2])))
    for _, budget, arch in cells:
        model, rule = FEW_LABEL_ARCHS[arch]
        for seed in settings.seeds:
            key = f"{arch}/{budget:g}/seed{seed}"
            if res.get("few-labels", key):
                continue
            if f"{arch}/{budget:g}" in settings.skip:
                res.put("few-labels", key, {"arch": arch, "budget": budget, "seed": seed,
                                            "skipped": "too slow for this CPU (--skip)"})
                continue
            parent = hebbian_run(work, data, arch, settings)
            out = work / "few-labels" / arch / f"{budget:g}" / f"seed{seed}"
            _, train_s = timed(hebbret.finetune, run=str(parent), data=str(data / "train"),
                               label_fraction=budget, mode="full", from_scratch=rule is None,
                               epochs=settings.finetune_epochs, seed=seed, out=str(out),
                               quiet=True)
            scores, eval_s = timed(evaluate_classifier, out, str(data / "test"))
            card = read_json(out / "model.json")["training"]
            res.put("few-labels", key, {
                "arch": arch, "model": model, "rule": rule or "scratch", "budget": budget,
                "seed": seed, "labeled_items": card["labeled_items"], "top1": scores["top1"],
                "top5": scores["top5"], "final_train_loss": card["final_train_loss"],
                "finetune_s": train_s, "eval_s": eval_s,
                "protocol": f"finetune --mode full, {settings.finetune_epochs} epochs"})
            log.info("few-labels/%s: top-1 %.2f (%.0f s)", key, scores["top1"], train_s)


# ---------------------------------------------------------------- stage 3c: recipe variants
def stage_variants(work: Path, data: Path, res: Results, settings: Settings) -> None:
    """Each LIFT_VARIANTS recipe: one Hebbian epoch, kNN top-1 and convergence, against the
    stage-1 Hebbian run (its features are deleted afterwards: 3 GB each)."""
    for name, (change, kwargs) in LIFT_VARIANTS.items():
        if res.get("variants", name):
            continue
        root, info = c3_features(work, data, name, settings)
        x_train, y_train, x_test, y_test = labels_of(root / "emb_train", root / "emb_test")
        knn, knn_s = timed(knn_classify, x_train, y_train, x_test, y_test, ks=[settings.knn_k],
                           temperature=0.07)
        card = read_json(root / "run" / "model.json")["training"]
        res.put("variants", name, {"change": change, "model_kwargs": kwargs, **info,
                                   "knn_top1": knn["k"][settings.knn_k]["top1"], "knn_s": knn_s,
                                   "convergence": card.get("convergence")})
        log.info("variants/%s: kNN top-1 %.2f", name, knn["k"][settings.knn_k]["top1"])
        del x_train, x_test
        for split in ("train", "test"):
            shutil.rmtree(root / f"emb_{split}")


# ---------------------------------------------------------------- stage 3b: frozen protocols
def stage_protocols(work: Path, data: Path, res: Results, settings: Settings) -> None:
    """knn / linear / propagate on the cached stage-1 features, every budget and seed."""
    from hebbret.fewshot import FROZEN_PROTOCOLS, FewShotConfig, evaluate_frozen

    for variant in C3_VARIANTS:
        todo = [b for b in settings.budgets if not res.get("protocols", f"{variant}/{b:g}")]
        if not todo:
            continue
        root, _ = c3_features(work, data, variant, settings)
        x_train, y_train, x_test, y_test = labels_of(root / "emb_train", root / "emb_test")
        for budget in todo:
            cfg = FewShotConfig(protocols=list(FROZEN_PROTOCOLS), label_fraction=budget,
                                seeds=list(settings.seeds), knn_k=settings.knn_k,
                                graph_index=f"PCA{settings.pca_dim},Flat")
            result, wall = timed(evaluate_frozen, x_train, y_train, x_test, y_test, cfg)
            row = {"variant": variant, "budget": budget, "wall_s": wall,
                   "graph_index": cfg.graph_index, "graph_k": cfg.graph_k,
                   "standardize": cfg.standardize, "knn_k": cfg.knn_k}
            for protocol, r in result.items():
                row[protocol] = {"top1": r["top1"],
                                 "seeds": {s: v["top1"] for s, v in r["seeds"].items()}}
                if protocol == "propagate":
                    row[protocol]["alpha"] = {s: v["alpha"] for s, v in r["seeds"].items()}
            res.put("protocols", f"{variant}/{budget:g}", row)
            log.info("protocols/%s/%g: %s", variant, budget,
                     {p: row[p]["top1"]["mean"] for p in result})
        del x_train, x_test


# ---------------------------------------------------------------- stage 4: per-layer table
def stage_layers(work: Path, data: Path, res: Results, settings: Settings) -> None:
    for rule in ("hpca", "swta"):
        run = hebbian_run(work, data, f"6l-{rule}", settings)
        n_blocks = len(read_json(run / "model.json")["model_args"]["widths"])
        for block in range(n_blocks):
            key = f"6l-{rule}/block{block}"
            if res.get("layers", key):
                continue
            embs = {}
            for split in ("train", "test"):
                embs[split] = work / f"6l-{rule}" / f"emb_block{block}_{split}"
                embed_once(run, data / split, embs[split], settings, layer=f"block{block}",
                           pool="flatten", dtype="float16")
            x_train, y_train, x_test, y_test = labels_of(embs["train"], embs["test"])
            knn, knn_s = timed(knn_classify, x_train, y_train, x_test, y_test,
                               ks=[settings.knn_k])
            lin, lin_s = timed(linear_probe, x_train, y_train, x_test, y_test,
                               epochs=settings.linear_epochs)
            res.put("layers", key, {"rule": rule, "layer": f"block{block}",
                                    "dim": int(x_train.shape[1]),
                                    "knn_top1": knn["k"][settings.knn_k]["top1"],
                                    "linear_top1": lin["top1"],
                                    "linear_weight_decay": lin["weight_decay"],
                                    "knn_s": knn_s, "linear_s": lin_s})
            log.info("layers/%s: %s", key, res.get("layers", key))
            del x_train, x_test
            for emb in embs.values():  # up to 2.2 GB a block: 10 blocks filled this disk
                shutil.rmtree(emb)


# ---------------------------------------------------------------- stage 5: speed
def step_rates(data: Path, settings: Settings, steps: int = 200, rounds: int = 2
               ) -> dict[str, Any]:
    """Images/s of the c3 Hebbian step (fp32, bf16) and of a backprop step, interleaved in one
    process on the same real batches (batch 10, channels-last), so drift hits all alike."""
    from hebbret.data import make_loader, open_dataset
    from hebbret.models import create_model
    from hebbret.pretraining import hebbian_step
    from hebbret.runtime import keep_freed_memory

    keep_freed_memory()
    torch.manual_seed(0)
    probe = create_model("hebb_softhebb_c3", img_size=32, **settings.c3_kwargs)
    cfg = probe.default_cfg
    ds = open_dataset(str(data / "train"), "train", 3, (32, 32), mean=cfg["mean"], std=cfg["std"])
    batches = []
    for b in make_loader(ds, 10, seed=0):
        batches.append((b.images.contiguous(memory_format=torch.channels_last), b.labels))
        if len(batches) == steps:
            break

    def hebbian(autocast: torch.dtype | None) -> Callable[[], None]:
        model = create_model("hebb_softhebb_c3", img_size=32, **settings.c3_kwargs)
        model = model.to(memory_format=torch.channels_last).train()
        layers = model.hebb_layers()
        opt = torch.optim.SGD([{"params": [m.weight], "lr": lr} for m, lr in
                               zip(layers, cfg["hebb"]["lr"], strict=True)])
        return lambda x, y: hebbian_step(model, opt, x, list(range(len(layers))), autocast)

    def backprop() -> Callable[[], None]:
        model = create_model("hebb_softhebb_c3", img_size=32, **settings.c3_kwargs)
        model = model.to(memory_format=torch.channels_last).train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True,
                              weight_decay=5e-4)

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    kinds = {"hebbian_fp32": hebbian(None), "hebbian_bf16": hebbian(torch.bfloat16),
             "backprop_fp32": backprop()}
    seconds = {k: [] for k in kinds}
    for r in range(rounds + 1):  # round 0 warms up
        for name, step in kinds.items():
            t0 = time.perf_counter()
            for x, y in batches:
                step(x, y)
            if r:
                seconds[name].append(time.perf_counter() - t0)
    images = sum(len(y) for _, y in batches)
    out = {}
    for name, ts in seconds.items():
        best = min(ts)
        out[name] = {"images_per_s": round(images / best, 1),
                     "epoch_s_projected": round(50_000 * best / images, 1),
                     "round_s": [round(t, 2) for t in ts]}
    out["protocol"] = (f"{steps} real batches of 10, {rounds} interleaved rounds after a warm-up "
                       f"round, fastest round; projected to 50,000 images")
    return out


def stage_speed(work: Path, data: Path, res: Results, settings: Settings) -> None:
    if not res.get("speed", "step_rates"):
        res.put("speed", "step_rates", step_rates(data, settings, settings.speed_steps))
    if not res.get("speed", "bf16_epoch"):
        root, info = c3_features(work, data, "hebbian", settings, precision="bf16")
        x_train, y_train, x_test, y_test = labels_of(root / "emb_train", root / "emb_test")
        readout, wall = timed(softhebb_readout, x_train, y_train, x_test, y_test,
                              epochs=settings.readout_epochs, seed=0)
        row = {**info, "readout_top1": readout["top1"], "readout_s": wall}
        if not info.get("reused"):
            row["images_per_s"] = round(row["images"] / row["wall_s"], 1)
        res.put("speed", "bf16_epoch", row)


STAGE_FUNCS: dict[str, Callable[[Path, Path, Results, Settings], None]] = {
    "softhebb": stage_softhebb, "retrieval": stage_retrieval, "few-labels": stage_few_labels,
    "protocols": stage_protocols, "variants": stage_variants, "layers": stage_layers,
    "speed": stage_speed,
}


def find_data_root(root: Path) -> Path:
    for cand in (root, root / "cifar10"):
        if (cand / "train").is_dir() and (cand / "test").is_dir():
            return cand
    raise FileNotFoundError(f"no train/ and test/ folders under {root} or {root / 'cifar10'}; "
                            f"extract cifar10-jpeg.tar.gz there first")


def main(argv: list[str] | None = None, settings: Settings | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_root", nargs="?", help="folder with train/ and test/")
    parser.add_argument("--stage", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--work", default="runs/cifar10-repro", help="runs and cached features")
    parser.add_argument("--results", default=str(REPO / "tools/results/cifar10.json"))
    parser.add_argument("--readme", default=str(REPO / "README.md"),
                        help="README whose Results section is rewritten ('' for none)")
    parser.add_argument("--force", action="store_true", help="redo the chosen stages")
    parser.add_argument("--readme-only", action="store_true")
    parser.add_argument("--skip", nargs="*", metavar="ARCH/BUDGET",
                        help="few-label cells to record as too slow for this CPU, e.g. "
                             "c3-softhebb/0.1 c3-scratch/0.1")
    parser.add_argument("--budgets", type=float, nargs="+",
                        help="few-label fractions to run now (default 0.01 0.05 0.1)")
    parser.add_argument("--seeds", type=int, nargs="+", help="few-label seeds (default 0 1 2)")
    parser.add_argument("--archs", nargs="+", choices=list(FEW_LABEL_ARCHS),
                        help="few-label backbones to run now (default all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = settings or Settings()
    if args.skip is not None:
        settings.skip = tuple(args.skip)
    if args.budgets:
        settings.budgets = tuple(args.budgets)
    if args.seeds is not None:
        settings.seeds = tuple(args.seeds)
    if args.archs:
        settings.archs = tuple(args.archs)
    res = Results(Path(args.results), argv)
    if not args.readme_only:
        if not args.data_root:
            parser.error("DATA_ROOT is required unless --readme-only")
        data = find_data_root(Path(args.data_root))
        torch.manual_seed(0)
        for stage in args.stage:
            if args.force:
                res.force(stage)
            log.info("stage %s", stage)
            STAGE_FUNCS[stage](Path(args.work), data, res, settings)
            if args.readme:
                write_readme(Path(args.readme), res.doc)
    if args.readme:
        write_readme(Path(args.readme), res.doc)
    return res.doc


# ---------------------------------------------------------------- README tables
BEGIN, END = "<!-- cifar10-results:begin -->", "<!-- cifar10-results:end -->"


def write_readme(readme: Path, doc: dict[str, Any]) -> None:
    """Replace the text between the markers in ``readme`` with tables made from ``doc``."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{readme} has no {BEGIN} ... {END} section to fill")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with atomic_path(readme) as tmp:
        Path(tmp).write_text(head + BEGIN + "\n" + render(doc) + END + tail)


def _f(v: Any, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _verdict(ok: bool | None) -> str:
    return "not measured yet" if ok is None else ("**met**" if ok else "**missed**")


def variants_table(var: dict[str, Any], base: dict[str, Any] | None,
                   heb: dict[str, Any] | None) -> list[str]:
    """Section 3c: recipe variants tried, against the stage-1 Hebbian run."""
    out = ["**3c. Variants of the Hebbian recipe** (one Hebbian epoch each, everything else as "
           "section 1; kNN top-1 as section 2; kept = it becomes a default)", "",
           "| variant | change | kNN top-1 | vs SoftHebb's recipe | convergence (distance per "
           "layer) | kept |", "|---|---|---:|---:|---|---|"]

    def conv(row: dict[str, Any] | None) -> str:
        c = (row or {}).get("convergence")
        return " / ".join(_f(la["distance"]) for la in c["layers"]) if c else "–"

    if base:
        out.append(f"| SoftHebb's recipe (section 1) | – | {_f(base['knn_top1'])} | – | "
                   f"{conv(heb)} | – |")
    for name, row in var.items():
        gap = row["knn_top1"] - base["knn_top1"] if base else None
        kept = "–" if gap is None else ("yes" if gap > 0 else "no")
        out.append(f"| {name} | {row['change']} | {_f(row['knn_top1'])} | "
                   f"{'–' if gap is None else f'{gap:+.2f}'} | {conv(row)} | {kept} |")
    if not var:
        out.append("| not run yet | | | | | |")
    return out + [""]


def protocols_table(prot: dict[str, Any], full: dict[tuple[str, float], list[float]]
                    ) -> list[str]:
    """Section 3b: every few-label protocol at every budget, Hebbian vs random init, with the
    ``full`` cells of section 3 (random-init ``full`` = from scratch) and the 1% targets."""
    out = ["**3b. Every few-label protocol** (`hebbret fewshot` on the section-1 features; knn: "
           "the labeled items as database, k = 20; linear: L-BFGS logistic regression, "
           "preprocessing and penalty by 5-fold CV on the labeled items; propagate: Zhou "
           "diffusion over the 10-NN graph of all 50,000 training images searched with a FAISS "
           "`PCA256,Flat` index, then a certainty-weighted kNN vote (α below); full: section 3; "
           "the same "
           "labeled subsets everywhere; test top-1, mean ± std over 3 seeds)", "",
           "| backbone | protocol | 1% | 5% | 10% |", "|---|---|---:|---:|---:|"]
    budgets = (0.01, 0.05, 0.1)
    means: dict[tuple[str, str, float], float] = {}
    for variant, full_arch in (("hebbian", "c3-softhebb"), ("random", "c3-scratch")):
        for protocol in ("knn", "linear", "propagate", "full"):
            cells = []
            for b in budgets:
                if protocol == "full":
                    v = full.get((full_arch, b))
                    if v:
                        means[(variant, protocol, b)] = statistics.mean(v)
                    cells.append("not run yet" if not v else f"{statistics.mean(v):.2f}" + (
                        f" ± {statistics.stdev(v):.2f}" if len(v) > 1 else " (1 seed)"))
                    continue
                row = prot.get(f"{variant}/{b:g}", {}).get(protocol)
                if row:
                    means[(variant, protocol, b)] = row["top1"]["mean"]
                cells.append(f"{row['top1']['mean']:.2f} ± {row['top1']['std']:.2f}" if row
                             else "not run yet")
            name = {"hebbian": "Hebbian", "random": "random init"}[variant]
            label = "full (from scratch)" if (variant, protocol) == ("random", "full") else protocol
            out.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    alphas = sorted({str(a) for row in prot.values() if "propagate" in row
                     for a in row["propagate"].get("alpha", {"-": "0.99 (fixed)"}).values()})
    if alphas:
        out += ["", f"propagate's α over the rows above: {', '.join(alphas)}."]
    hebb_1 = {p: means[("hebbian", p, 0.01)] for p in ("knn", "linear", "propagate", "full")
              if ("hebbian", p, 0.01) in means}
    lines = [""]
    if hebb_1:
        best = max(hebb_1, key=hebb_1.get)
        rnd = means.get(("random", best, 0.01))
        scratch = means.get(("random", "full", 0.01))
        if rnd is not None and scratch is not None:
            ok = hebb_1[best] >= rnd + 2 and hebb_1[best] >= scratch + 5
            lines.append(f"Target at 1%: the best Hebbian protocol ({best}, {hebb_1[best]:.2f}) "
                         f"≥ the same protocol on random init + 2 ({rnd:.2f}, "
                         f"{hebb_1[best] - rnd:+.2f}) and ≥ from scratch + 5 ({scratch:.2f}, "
                         f"{hebb_1[best] - scratch:+.2f}): {_verdict(ok)}.")
        if {"knn", "linear", "propagate"} <= set(hebb_1):
            ok = hebb_1["propagate"] > max(hebb_1["knn"], hebb_1["linear"])
            lines.append(f"Target propagate > knn and linear at 1% (Hebbian features): "
                         f"{_verdict(ok)} (propagate {hebb_1['propagate']:.2f}, knn "
                         f"{hebb_1['knn']:.2f}, linear {hebb_1['linear']:.2f}).")
    if len(lines) == 1:
        lines.append("Targets at 1%: not measured yet.")
    return out + lines + [""]


def render(doc: dict[str, Any]) -> str:
    """Markdown tables for the README from the results document."""
    st = doc.get("stages", {})
    out: list[str] = []
    sh, ret, few, prot, var, lay, spd = (st.get(k, {}) for k in STAGES)
    heb, rnd = sh.get("hebbian"), sh.get("random")
    out += ["**1. SoftHebb protocol** (`hebb_softhebb_c3`, rule softhebb, 1 Hebbian epoch at batch "
            "10, fp32; SoftHebb's linear readout on the frozen 24,576-d features: dropout 0.5, "
            "Adam 1e-3, 50 epochs, lr halved at epochs 10/17/25/30/35/40/45, no augmentation)",
            "", "| features | readout test top-1 | Hebbian epoch wall (s) | images/s | "
            "feature extraction, 60k images (s) |", "|---|---:|---:|---:|---:|"]
    for name, row in (("Hebbian (softhebb)", heb), ("random init", rnd)):
        if row:
            hebb = name.startswith("Hebbian")
            embed = (row["embed_train_s"] + row["embed_test_s"]
                     if "embed_train_s" in row and "embed_test_s" in row else None)
            n = len(row.get("readout_seeds") or [0])
            spread = f" ± {_f(row['readout_top1_std'])} ({n} seeds)" if n > 1 else " (1 seed)"
            out.append(f"| {name} | {_f(row['readout_top1'])}{spread} | "
                       f"{_f(row.get('wall_s'), 0) if hebb else '–'} | "
                       f"{_f(row.get('images_per_s'), 1) if hebb else '–'} | {_f(embed, 0)} |")
    out.append(f"| SoftHebb's own code, this machine (anchor) | {ANCHOR['readout_top1']} | "
               f"{ANCHOR['hebbian_epoch_s']:.0f} | {50_000 / ANCHOR['hebbian_epoch_s']:.1f} | "
               f"{ANCHOR['embed_60k_s']:.0f} |")
    out += ["", f"Target readout ≥ 78.0% (mean of 3 seeds): "
            f"{_verdict(heb and heb['readout_top1'] >= 78.0)}"
            + (f" ({_f(heb['readout_top1'])}%)." if heb else ".")]
    if heb and heb.get("convergence"):
        dist = ", ".join(f"layer {c['layer']} {_f(c['distance'])}"
                         for c in heb["convergence"]["layers"])
        out.append(f"Convergence after the epoch ({heb['steps_per_phase']} steps per layer; "
                   f"SoftHebb distance mean |‖w‖ − 1|, converged ≤ 1.0): {dist}.")
    out.append("")

    out += ["**2. kNN and retrieval** (train = database, test = queries; cosine; kNN k = 20, "
            "T = 0.07; mAP over the whole database, mAP@100 normalised by min(R, 100)). PCA rows: "
            "a FAISS `PCA256,L2norm,Flat` index, PCA fitted in torch (randomised SVD).", "",
            "| features | dim | kNN top-1 | mAP | mAP@100 | P@100 | Recall@1 |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for key, row in ret.items():
        name = ("Hebbian" if key.startswith("hebbian") else "random init") + \
            (" + PCA" if "pca" in key else "")
        out.append(f"| {name} | {row['dim']} | {_f(row['knn_top1'])} | {_f(row['mAP'])} | "
                   f"{_f(row['mAP@100'])} | {_f(row['P@100'])} | {_f(row['Recall@1'])} |")
    if ret.get("hebbian") and ret.get("random"):
        gap = ret["hebbian"]["knn_top1"] - ret["random"]["knn_top1"]
        out += ["", f"Target kNN ≥ random init + 10 points: {_verdict(gap >= 10)} "
                f"({gap:+.2f} points)."]
    out.append("")

    out += ["**3. Few labels** (FastHebb's protocol, `hebbret finetune --mode full`: dropout 0.5 + "
            "linear head, SGD Nesterov lr 1e-3, wd 5e-4, 20 epochs, lr halved every epoch of the "
            "second half; class-balanced label subsets; test top-1, mean ± std over seeds (n))",
            ""]
    budgets = sorted({0.01, 0.05, 0.1} | {r["budget"] for r in few.values()})
    out += ["| backbone | " + " | ".join(f"{b:.0%}" for b in budgets) + " |",
            "|---|" + "---:|" * len(budgets)]
    cells: dict[tuple[str, float], list[float]] = {}
    skipped: set[tuple[str, float]] = set()
    for r in few.values():
        if "skipped" in r:
            skipped.add((r["arch"], r["budget"]))
        else:
            cells.setdefault((r["arch"], r["budget"]), []).append(r["top1"])

    def cell(arch: str, b: float) -> str:
        v = cells.get((arch, b))
        if not v:
            return "too slow for this CPU, not run" if (arch, b) in skipped else "not run yet"
        rest = "; the other seeds too slow for this CPU, not run" if (arch, b) in skipped else ""
        if len(v) == 1:
            return f"{v[0]:.2f} (1 seed{rest})"
        return f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f} ({len(v)}{rest})"

    for arch in FEW_LABEL_ARCHS:
        out.append(f"| {arch} | " + " | ".join(cell(arch, b) for b in budgets) + " |")
    gaps: dict[str, dict[float, tuple[float, int]]] = {}  # rule row -> budget -> (gap, seeds)
    for arch in ("6l-hpca", "6l-swta", "c3-softhebb"):
        base = "c3-scratch" if arch.startswith("c3") else "6l-scratch"
        for b in (0.01, 0.05):
            if cells.get((arch, b)) and cells.get((base, b)):
                n = min(len(cells[(arch, b)]), len(cells[(base, b)]))
                gap = statistics.mean(cells[(arch, b)]) - statistics.mean(cells[(base, b)])
                gaps.setdefault(arch, {})[b] = (gap, n)
    complete = [a for a, g in gaps.items() if len(g) == 2 and all(n >= 3 for _, n in g.values())]
    met = True if any(all(g >= 5 for g, _ in gaps[a].values()) for a in complete) else (
        False if len(complete) == 3 else None)
    detail = "; ".join(f"{a}: " + ", ".join(f"{b:.0%} {g:+.2f} (n={n})" for b, (g, n) in
                                           sorted(gaps[a].items())) for a in gaps)
    out += ["", "Target Hebbian ≥ scratch + 5 points at both 1% and 5%, for at least one rule: "
            f"{'not settled: 3 seeds per cell still to run' if met is None else _verdict(met)} "
            f"({detail or 'no pairs yet'}).", ""]

    out += protocols_table(prot, cells)
    out += variants_table(var, ret.get("hebbian"), heb)

    out += ["**4. Per layer** (`hebb_fasthebb_6l`, 1 Hebbian epoch; flattened block outputs; kNN "
            "k = 20; linear probe = `hebbret eval linear`)", "",
            "| rule | layer | dim | kNN top-1 | linear top-1 |", "|---|---|---:|---:|---:|"]
    for row in lay.values():
        out.append(f"| {row['rule']} | {row['layer']} | {row['dim']} | {_f(row['knn_top1'])} | "
                   f"{_f(row['linear_top1'])} |")
    if not lay:
        out.append("| not run yet | | | | |")
    out.append("")

    rates, bf16 = spd.get("step_rates"), spd.get("bf16_epoch")
    out += ["**5. Speed** (`hebb_softhebb_c3`, batch 10, 50,000 images; anchor: SoftHebb's own "
            f"code on this machine, {ANCHOR['hebbian_epoch_s']:.0f} s)", "",
            "| measurement | epoch wall (s) | inside the steps (s) | images/s | vs anchor | commit |",
            "|---|---:|---:|---:|---:|---|"]
    a = ANCHOR["hebbian_epoch_s"]
    for label, row in (("Hebbian epoch fp32 (stage 1 run)", heb),
                       ("Hebbian epoch bf16 autocast", bf16)):
        if row and row.get("wall_s"):
            out.append(f"| {label} | {row['wall_s']:.1f} | {row['train_seconds']:.1f} | "
                       f"{row['images_per_s']:.1f} | {a / row['wall_s']:.2f}× | "
                       f"{row['git_commit']} |")
    if rates:
        for name, label in (("hebbian_fp32", "Hebbian step fp32"),
                            ("hebbian_bf16", "Hebbian step bf16"),
                            ("backprop_fp32", "backprop step fp32 (SGD, CE loss)")):
            r = rates[name]
            out.append(f"| {label}, projected from the step rate | {r['epoch_s_projected']:.0f} | "
                       f"– | {r['images_per_s']:.1f} | {a / r['epoch_s_projected']:.2f}× | "
                       f"{rates['git_commit']} |")
        out += ["", f"Step rates: {rates['protocol']}. Hebbian / backprop time per image, same "
                "process: "
                f"{rates['backprop_fp32']['images_per_s'] / rates['hebbian_fp32']['images_per_s']:.2f}"
                " (fp32), "
                f"{rates['backprop_fp32']['images_per_s'] / rates['hebbian_bf16']['images_per_s']:.2f}"
                " (bf16 Hebbian vs fp32 backprop)."]

    def by(value: float, limit: float) -> str:
        return f"{value:.1f} s, {'under' if value <= limit else 'over'} by {abs(limit - value):.1f} s"

    fp32_ok = bf16_ok = None
    fp32_txt = bf16_txt = ""
    if heb and heb.get("wall_s"):
        fp32_ok, fp32_txt = heb["wall_s"] <= 620, f" ({by(heb['wall_s'], 620)})"
    if bf16 and bf16.get("wall_s") and heb:
        fp32 = heb.get("readout_seeds", {}).get("0", {}).get("top1", heb["readout_top1"])
        gap = bf16["readout_top1"] - fp32
        bf16_ok = bf16["wall_s"] <= 370 and abs(gap) <= 0.5
        bf16_txt = (f" (wall clock {by(bf16['wall_s'], 370)}; inside the steps "
                    f"{bf16['train_seconds']:.1f} s; readout {_f(bf16['readout_top1'])}% vs fp32 "
                    f"{_f(fp32)}%, same readout seed, {gap:+.2f} points)")
    out += ["", f"Target fp32 epoch ≤ 620 s: {_verdict(fp32_ok)}{fp32_txt}. Target bf16 epoch "
            f"≤ 370 s with the readout within 0.5 points: {_verdict(bf16_ok)}{bf16_txt}."]
    commits = sorted({r.get("git_commit", "?") for s in st.values() for r in s.values()})
    machines = sorted({r.get("machine", "?") for s in st.values() for r in s.values()})
    out += ["", f"Produced by `tools/reproduce_cifar10.py` (commits {', '.join(commits) or '–'}; "
            f"{'; '.join(machines) or '–'}); raw numbers in `tools/results/cifar10.json`.", ""]
    return "\n".join(out)


if __name__ == "__main__":
    main()
