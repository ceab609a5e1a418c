"""reproduce_cifar10 stages on frozen features: SoftHebb's readout (1), kNN and retrieval (2),
per layer (4), and speed (5)."""

from __future__ import annotations

import logging
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from faiss.contrib.evaluation import knn_intersection_measure

from _common.cifar10_runs import (
    C3_VARIANTS,
    Settings,
    c3_features,
    embed_once,
    hebbian_run,
)
from _common.results import ResultsFile
from _common.timing import timed_call
from hebbret.data import make_loader, open_dataset
from hebbret.eval import (
    knn_classify,
    linear_probe,
    load_labeled_pair,
    retrieval_metrics,
    softhebb_readout,
)
from hebbret.eval.knn import cosine_blocks
from hebbret.index import build_index, load_index, search_index, transform_like_index
from hebbret.models import create_model
from hebbret.pretraining import hebbian_step
from hebbret.runs import read_card
from hebbret.runtime import keep_freed_memory

log = logging.getLogger("reproduce_cifar10")


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


def step_rates(data: Path, settings: Settings, steps: int = 200, rounds: int = 2
               ) -> dict[str, Any]:
    """Images/s of the c3 Hebbian step (fp32, bf16) and of a backprop step, interleaved in one
    process on the same real batches (batch 10, channels-last), so drift hits all alike."""
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
