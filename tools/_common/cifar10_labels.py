"""reproduce_cifar10 stages with few labels: fine-tuning against scratch (3), every frozen
protocol (3b), recipe variants (3c)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import hebbret
from _common.cifar10_runs import (
    C3_VARIANTS,
    FEW_LABEL_ARCHS,
    LIFT_VARIANTS,
    Settings,
    c3_features,
    hebbian_run,
)
from _common.results import ResultsFile
from _common.timing import timed_call
from hebbret.eval import (
    knn_classify,
    load_labeled_pair,
)
from hebbret.finetuning import evaluate_classifier
from hebbret.runs import read_card

log = logging.getLogger("reproduce_cifar10")


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
