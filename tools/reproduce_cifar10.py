"""Reproduce the Hebbian bars on CIFAR-10 with hebbret's own library calls.

    python tools/reproduce_cifar10.py DATA_ROOT [--stage softhebb retrieval few-labels layers speed]

DATA_ROOT holds ``train/<class>/`` and ``test/<class>/`` (or ``cifar10/train`` ...), the layout of
``cifar10-jpeg.tar.gz``. Stages:

- ``softhebb``: hebb_softhebb_c3, 1 Hebbian epoch (rule softhebb, batch 10), frozen flattened
  features cached as float16, SoftHebb's linear readout; the same on the random-init network.
- ``retrieval``: kNN and retrieval metrics on those features (train = database, test =
  queries), in 24,576-d and after PCA to 256-d (a FAISS ``PCA256,L2norm,Flat`` index whose
  PCA is fitted in torch; L2norm so that the index ranks exactly as the cosine metrics do),
  and on the backbone's own (pooled) descriptor.
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
too slow for this CPU. With ``--readme docs/results.md`` its CIFAR-10 section is rewritten from the JSON
after each stage by ``tools/cifar10_tables.py`` (``--readme-only --readme docs/results.md`` just rewrites
it); without it, no file but the JSON is touched.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from faiss.contrib.evaluation import knn_intersection_measure

import hebbret
from _common.results import ResultsFile
from _common.timing import timed_call
from hebbret.eval import (
    knn_classify,
    linear_probe,
    load_labeled_pair,
    retrieval_metrics,
    softhebb_readout,
)
from hebbret.eval.knn import cosine_blocks
from hebbret.finetuning import evaluate_classifier
from hebbret.index import build_index, load_index, search_index, transform_like_index
from hebbret.runs import read_card
from hebbret.stages import BackboneStages

log = logging.getLogger("reproduce_cifar10")
REPO = Path(__file__).resolve().parent.parent
STAGES = ("softhebb", "retrieval", "few-labels", "protocols", "variants", "layers", "speed")


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
    whiten_dim: int = 512  # section 2's PCA-whitening rows (FAISS PCAW<d>)
    linear_max_iter: int = 100  # L-BFGS iterations of the per-layer table's linear probe
    embed_batch: int = 256
    speed_steps: int = 200  # batches per round of the interleaved step-rate measurement
    skip: tuple[str, ...] = ()  # few-label cells not to run ("c3-scratch/0.1"): "too slow"
    archs: tuple[str, ...] = ()  # few-label rows to run now (default: all of FEW_LABEL_ARCHS)
    protocols: tuple[str, ...] = ("knn", "linear", "propagate")  # 3b protocols to run now; the
    #                                                  others' cells are kept from the last row




def pretrain_once(run: Path, data: Path, **kwargs: Any) -> dict[str, Any]:
    """Hebbian-pretrain into ``run`` (``ROOT/run``) unless complete; resumes a killed run."""
    stages = BackboneStages(run.parent, run_name=run.name, quiet=True, digits=2)
    return stages.pretrain(str(data / "train"), img_size=32, **kwargs)


def embed_once(run: Path, data: Path, out: Path, settings: Settings, **kwargs: Any) -> float | None:
    """Embed ``data`` into ``out`` unless complete; returns the wall time or None if reused."""
    stages = BackboneStages(run.parent, run_name=run.name, quiet=True, digits=2)
    name = out.name.removeprefix("emb_")
    stages.embed(name, str(data), batch_size=settings.embed_batch, **kwargs)
    return stages.embed_seconds.get(name)



# ---------------------------------------------------------------- stage 1: SoftHebb protocol
C3_VARIANTS = {"hebbian": "softhebb", "random": "none"}
# Changes to the Hebbian recipe tried against the stage-1 run: (what it changes, model kwargs)
C3_WIDTHS = [96, 384, 1536]  # SoftHebb's


def _wider_last(c3_kwargs: dict) -> dict:
    widths = list(c3_kwargs.get("widths", C3_WIDTHS))
    return {"widths": widths[:-1] + [2 * widths[-1]]}


# name -> (what it changes, model kwargs (or a function of the run's c3 kwargs), pretrain kwargs)
LIFT_VARIANTS = {
    "init-radius-5": ("neurons start at norm 5 instead of SoftHebb's 25 (the embedded default's "
                      "choice for small collections)", {"init_radius": 5.0}, {}),
    "two-epochs": ("two Hebbian epochs instead of one (10,000 steps per layer)", {},
                   {"epochs": 2}),
    "wide-last-layer": ("twice the neurons in the last layer (3,072: 49,152-d features)",
                        _wider_last, {}),
    "input-whitening": ("5×5 ZCA patch whitening of the input (ε = 0.1 · mean eigenvalue, fitted "
                        "on 5,120 training images) in front of layer 1", {"whiten_patch": 5}, {}),
}


def c3_features(work: Path, data: Path, variant: str, settings: Settings,
                precision: str = "fp32") -> tuple[Path, dict[str, Any]]:
    """Pretrain (or reuse) a c3 run and its cached float16 train/test features (flattened, as
    SoftHebb's readout takes them); ``variant``: hebbian, random or a LIFT_VARIANTS name."""
    name = f"c3-{variant}" + ("" if precision == "fp32" else f"-{precision}")
    run = work / name / "run"
    _, lift, options = LIFT_VARIANTS.get(variant, ("", {}, {}))
    lift = lift(settings.c3_kwargs) if callable(lift) else lift
    info = pretrain_once(run, data, model="hebb_softhebb_c3",
                         rule=C3_VARIANTS.get(variant, "softhebb"),
                         model_kwargs={**settings.c3_kwargs, **lift},
                         **{"epochs": 1, **options},  # SoftHebb: 1 epoch
                         **({} if precision == "fp32" else {"precision": precision}))
    for split in ("train", "test"):
        wall = embed_once(run, data / split, work / name / f"emb_{split}", settings,
                          dtype="float16", layer="features", pool="flatten",  # the readout's
                          project=False)
        if wall is not None:  # also in pretrain.json, for later reuses of the run
            info[f"embed_{split}_s"] = wall
    return work / name, info


def stage_softhebb(work: Path, data: Path, res: ResultsFile, settings: Settings) -> None:
    for variant in C3_VARIANTS:
        if res.get("softhebb", variant):
            log.info("softhebb/%s: already in results", variant)
            continue
        root, info = c3_features(work, data, variant, settings)
        x_train, y_train, x_test, y_test = load_labeled_pair(root / "emb_train", root / "emb_test")
        readouts, walls = {}, []
        for seed in settings.readout_seeds:
            readouts[seed], wall = timed_call(softhebb_readout, x_train, y_train, x_test, y_test,
                                         epochs=settings.readout_epochs, seed=seed)
            walls.append(wall)
            log.info("softhebb/%s: readout seed %d top-1 %.2f", variant, seed,
                     readouts[seed]["top1"])
        top1 = [r["top1"] for r in readouts.values()]
        first = next(iter(readouts.values()))
        card = read_card(root / "run").training
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
    knn, knn_s = timed_call(knn_classify, x_train, y_train, x_test, y_test, ks=[settings.knn_k],
                       temperature=0.07)
    ret, ret_s = timed_call(retrieval_metrics, x_train, y_train, x_test, y_test, ks=[1, 100])
    return {"dim": int(x_train.shape[1]), "knn_top1": knn["k"][settings.knn_k]["top1"],
            "knn_top5": knn["k"][settings.knn_k]["top5"], "knn_k": settings.knn_k,
            "knn_temperature": 0.07, "mAP": ret["mAP"], "mAP@100": ret["mAP@k"][100],
            "P@100": ret["P@k"][100], "Recall@1": ret["Recall@k"][1], "knn_s": knn_s,
            "retrieval_s": ret_s}


def stage_retrieval(work: Path, data: Path, res: ResultsFile, settings: Settings) -> None:
    """kNN and retrieval on the full features, and through two FAISS indexes: a PCA and a
    PCA-whitening (each component scaled to unit variance over the collection)."""
    reduced = {f"pca{settings.pca_dim}": f"PCA{settings.pca_dim},L2norm,Flat",
               f"pcaw{settings.whiten_dim}": f"PCAW{settings.whiten_dim},L2norm,Flat"}
    for variant in C3_VARIANTS:
        root = work / f"c3-{variant}"
        if not (root / "emb_test" / "meta.json").exists():
            raise FileNotFoundError(f"{root} has no cached features; run --stage softhebb first")
        x_train, y_train, x_test, y_test = load_labeled_pair(root / "emb_train", root / "emb_test")
        if not res.get("retrieval", variant):
            res.put("retrieval", variant, retrieval_row(x_train, y_train, x_test, y_test, settings))
            log.info("retrieval/%s: %s", variant, res.get("retrieval", variant))
        if not res.get("retrieval", f"{variant}-descriptor"):  # the backbone's own descriptor
            for split in ("train", "test"):
                embed_once(root / "run", data / split, root / f"emb_{split}_descriptor", settings)
            pooled = load_labeled_pair(root / "emb_train_descriptor", root / "emb_test_descriptor")
            spec = read_card(root / "run").embedding
            res.put("retrieval", f"{variant}-descriptor",
                    {**retrieval_row(*pooled, settings), "layer": spec.layer, "pool": spec.pool,
                     "gem_p": spec.gem_p})
            log.info("retrieval/%s-descriptor: %s", variant,
                     res.get("retrieval", f"{variant}-descriptor"))
        for name, factory in reduced.items():
            key = f"{variant}-{name}"
            if res.get("retrieval", key):
                continue
            index_dir = root / f"index_{name}"
            if index_dir.exists():  # rebuilt: its factory or the features may have changed
                shutil.rmtree(index_dir)
            _, build_s = timed_call(build_index, root / "emb_train", index_dir, factory=factory)
            z_train = transform_like_index(index_dir, x_train)
            z_test = transform_like_index(index_dir, x_test)
            row = retrieval_row(z_train, y_train, z_test, y_test, settings)
            # the index answers queries as the metrics rank them: its top 10 on 500 queries
            probe = np.arange(min(500, len(x_test)))
            _, ids, _, _ = search_index(index_dir, np.asarray(x_test[probe], dtype=np.float32),
                                        k=10)
            exact = next(cosine_blocks(z_test[probe], z_train))[1].topk(10, dim=1).indices.numpy()
            agree = float(knn_intersection_measure(exact, ids))
            meta = load_index(index_dir)[2]
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


def stage_few_labels(work: Path, data: Path, res: ResultsFile, settings: Settings) -> None:
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
            _, train_s = timed_call(hebbret.finetune, run=str(parent), data=str(data / "train"),
                               label_fraction=budget, mode="full", from_scratch=rule is None,
                               epochs=settings.finetune_epochs, seed=seed, out=str(out),
                               quiet=True)
            scores, eval_s = timed_call(evaluate_classifier, out, str(data / "test"))
            card = read_card(out).training
            res.put("few-labels", key, {
                "arch": arch, "model": model, "rule": rule or "scratch", "budget": budget,
                "seed": seed, "labeled_items": card["labeled_items"], "top1": scores["top1"],
                "top5": scores["top5"], "final_train_loss": card["final_train_loss"],
                "finetune_s": train_s, "eval_s": eval_s,
                "protocol": f"finetune --mode full, {settings.finetune_epochs} epochs"})
            log.info("few-labels/%s: top-1 %.2f (%.0f s)", key, scores["top1"], train_s)


# ---------------------------------------------------------------- stage 3c: recipe variants
def stage_variants(work: Path, data: Path, res: ResultsFile, settings: Settings) -> None:
    """Each LIFT_VARIANTS recipe: kNN top-1 and convergence against the stage-1 Hebbian run
    (its features are deleted afterwards: 3 GB each)."""
    for name, (change, kwargs, options) in LIFT_VARIANTS.items():
        if res.get("variants", name):
            continue
        root, info = c3_features(work, data, name, settings)
        x_train, y_train, x_test, y_test = load_labeled_pair(root / "emb_train", root / "emb_test")
        knn, knn_s = timed_call(knn_classify, x_train, y_train, x_test, y_test, ks=[settings.knn_k],
                           temperature=0.07)
        card = read_card(root / "run").training
        kwargs = kwargs(settings.c3_kwargs) if callable(kwargs) else kwargs
        res.put("variants", name, {"change": change, "model_kwargs": kwargs,
                                   "pretrain_kwargs": options, **info,
                                   "knn_top1": knn["k"][settings.knn_k]["top1"], "knn_s": knn_s,
                                   "convergence": card.get("convergence")})
        log.info("variants/%s: kNN top-1 %.2f", name, knn["k"][settings.knn_k]["top1"])
        del x_train, x_test
        for split in ("train", "test"):
            shutil.rmtree(root / f"emb_{split}")


# ---------------------------------------------------------------- stage 3b: frozen protocols
def stage_protocols(work: Path, data: Path, res: ResultsFile, settings: Settings) -> None:
    """knn / linear / propagate on the cached stage-1 features, every budget and seed."""
    from hebbret.config import FROZEN_PROTOCOLS, FewShotConfig
    from hebbret.eval.fewshot import evaluate_frozen

    for variant in C3_VARIANTS:
        todo = [b for b in settings.budgets if not res.get("protocols", f"{variant}/{b:g}")]
        if not todo:
            continue
        root, _ = c3_features(work, data, variant, settings)
        x_train, y_train, x_test, y_test = load_labeled_pair(root / "emb_train", root / "emb_test")
        for budget in todo:
            key = f"{variant}/{budget:g}"
            old = res.doc["stages"].get("protocols", {}).get(key) or {}
            kept = {p: {**old[p], "git_commit": old[p].get("git_commit") or old.get("git_commit")}
                    for p in FROZEN_PROTOCOLS
                    if p not in settings.protocols and p in old}
            cfg = FewShotConfig(protocols=[p for p in FROZEN_PROTOCOLS if p not in kept],
                                label_fraction=budget, seeds=list(settings.seeds),
                                knn_k=settings.knn_k, graph_index=f"PCA{settings.pca_dim},Flat")
            result, wall = timed_call(evaluate_frozen, x_train, y_train, x_test, y_test, cfg)
            row = {"variant": variant, "budget": budget, "wall_s": wall,
                   "graph_index": cfg.graph_index, "graph_k": cfg.graph_k,
                   "standardize": cfg.standardize, "knn_k": cfg.knn_k, **kept}
            for protocol, r in result.items():
                row[protocol] = {"top1": r["top1"],
                                 "seeds": {s: v["top1"] for s, v in r["seeds"].items()}}
                if protocol == "propagate":
                    row[protocol]["alpha"] = {s: v["alpha"] for s, v in r["seeds"].items()}
                    row[protocol]["prior_weight"] = {s: v["prior_weight"]
                                                     for s, v in r["seeds"].items()}
            res.put("protocols", key, row)
            log.info("protocols/%s/%g: %s", variant, budget,
                     {p: row[p]["top1"]["mean"] for p in result})
        del x_train, x_test


# ---------------------------------------------------------------- stage 4: per-layer table
def stage_layers(work: Path, data: Path, res: ResultsFile, settings: Settings) -> None:
    for rule in ("hpca", "swta"):
        run = hebbian_run(work, data, f"6l-{rule}", settings)
        n_blocks = len(read_card(run).model_args["widths"])
        for block in range(n_blocks):
            key = f"6l-{rule}/block{block}"
            if res.get("layers", key):
                continue
            embs = {}
            for split in ("train", "test"):
                embs[split] = work / f"6l-{rule}" / f"emb_block{block}_{split}"
                embed_once(run, data / split, embs[split], settings, layer=f"block{block}",
                           pool="flatten", dtype="float16", project=False)
            x_train, y_train, x_test, y_test = load_labeled_pair(embs["train"], embs["test"])
            knn, knn_s = timed_call(knn_classify, x_train, y_train, x_test, y_test,
                               ks=[settings.knn_k])
            lin, lin_s = timed_call(linear_probe, x_train, y_train, x_test, y_test,
                               max_iter=settings.linear_max_iter)
            res.put("layers", key, {"rule": rule, "layer": f"block{block}",
                                    "dim": int(x_train.shape[1]),
                                    "knn_top1": knn["k"][settings.knn_k]["top1"],
                                    "linear_top1": lin["top1"],
                                    "linear_penalty": lin["penalty"],
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


def stage_speed(work: Path, data: Path, res: ResultsFile, settings: Settings) -> None:
    if not res.get("speed", "step_rates"):
        res.put("speed", "step_rates", step_rates(data, settings, settings.speed_steps))
    if not res.get("speed", "bf16_epoch"):
        root, info = c3_features(work, data, "hebbian", settings, precision="bf16")
        x_train, y_train, x_test, y_test = load_labeled_pair(root / "emb_train", root / "emb_test")
        readout, wall = timed_call(softhebb_readout, x_train, y_train, x_test, y_test,
                              epochs=settings.readout_epochs, seed=0)
        row = {**info, "readout_top1": readout["top1"], "readout_s": wall}
        if not info.get("reused"):
            row["images_per_s"] = round(row["images"] / row["wall_s"], 1)
        res.put("speed", "bf16_epoch", row)


STAGE_FUNCS: dict[str, Callable[[Path, Path, ResultsFile, Settings], None]] = {
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
    parser.add_argument("--readme", default="",
                        help="also rewrite this file's CIFAR-10 section from the results "
                             "(tools/cifar10_tables.py), e.g. docs/results.md")
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
    parser.add_argument("--protocols", nargs="+", choices=["knn", "linear", "propagate"],
                        help="with --force --stage protocols: the 3b protocols to re-run; the "
                             "others' cells are kept from the existing rows (default all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = settings or Settings()
    for name in ("skip", "budgets", "seeds", "archs", "protocols"):  # given on the command line
        if getattr(args, name) is not None:
            setattr(settings, name, tuple(getattr(args, name)))
    res = ResultsFile(args.results, ["python", "tools/reproduce_cifar10.py", *argv], REPO,
                      header={"dataset": "CIFAR-10 (JPEG q75 copy)"})
    write_readme = _readme_writer() if args.readme else None
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
            if write_readme:
                write_readme(Path(args.readme), res.doc)
    if write_readme:
        write_readme(Path(args.readme), res.doc)
    elif args.readme_only:
        parser.error("--readme-only needs --readme FILE")
    return res.doc


def _readme_writer() -> Callable[[Path, dict[str, Any]], None]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from cifar10_tables import write_readme

    return write_readme


if __name__ == "__main__":
    main()
