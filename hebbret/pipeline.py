"""The main job: pretrain -> embed -> index -> evaluate with all labels and with few labels, for a
Hebbian backbone against the same network with random weights, ending in one report.

Backbones of the report: :data:`BACKBONES` (Hebbian, and the same net with random weights;
with ``baselines=["ssl"]`` also the same net trained by BYOL for the Hebbian wall clock).
With all labels, each backbone's frozen features are scored by kNN, a linear probe and retrieval
(train = database, test = queries). With few labels, every protocol of :mod:`hebbret.eval.fewshot`
(knn, linear, propagate on frozen features; full = end-to-end fine-tuning) runs on the same
seeded, class-balanced labeled subsets; ``full`` on the random backbone is training from scratch.
Stages whose outputs already exist are reused, so a killed run picks up where it stopped.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._io import read_json, write_bytes, write_json
from .config import NAMED_DATASETS, POOLS, FewShotConfig, RunConfig
from .data import Survey, held_out, scan_image_folder, survey
from .eval.embeddings import evaluate_embeddings
from .finetuning import evaluate_full
from .models import FAMILIES, create_model
from .report import VIEW_NAMES, results_table, verdict
from .runs import read_card
from .runtime import pick_device, timed
from .stages import BackboneStages
from .viz import save_convergence, save_filters, save_retrieval_examples

log = logging.getLogger(__name__)

VARIANTS = ("hebbian", "random")
BACKBONES = {  # each row of the report, as results.json defines it
    "hebbian": "Hebbian pretraining on the unlabeled train split",
    "random": "the same network with random weights (BatchNorm statistics calibrated by one pass "
              "over the train split)",
    "ssl": "the same network trained end to end by self-supervised backprop (lightly's BYOL) on "
           "the unlabeled train split for the wall clock the Hebbian pretraining took "
           "(--baselines ssl)"}
SSL_METHOD = "byol"  # the --baselines ssl row: lightly's strongest few-epoch CIFAR-10 method


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
    test = set(np.flatnonzero(held_out([it.label for it in items], test_fraction, seed)).tolist())
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


# The input sizes `hebbret run` trains at, each with the SoftHebb net made for it; a collection
# gets the largest that its median short side reaches, at most AUTO_SIZE_MAX (docs/design.md §11).
SIZE_LADDER = ((32, "hebb_softhebb_c3"), (64, "hebb_softhebb_c3"), (96, "hebb_softhebb_c4"),
               (128, "hebb_softhebb_c4"), (160, "hebb_softhebb_c5"))
AUTO_SIZE_MAX = {"cpu": 96, "cuda": 160}
# ... and no larger than the images' detail needs: the smallest side where shrinking loses at most
# this share of their variance (data.detail_lost: 4× enlarged CIFAR-10 loses 0.7% at 32 px, the
# 300 px solar cells 17% at 32, 1.4% at 96, 0.6% at 128)
DETAIL_LOSS = 0.01
# Narrower nets where a CPU trains them: a quarter of SoftHebb's widths for the deeper nets
CPU_WIDTHS = {"hebb_softhebb_c4": [24, 96, 384, 1536], "hebb_softhebb_c5": [12, 48, 192, 768, 3072]}


@dataclass(frozen=True)
class Inputs:
    """What `hebbret run` trains on for a collection, and why (the report says it)."""

    in_chans: int
    img_size: int
    model: str
    model_kwargs: dict[str, Any]
    layer: str | None  # None: the backbone's descriptor
    pool: str | None
    flip: str | None  # its views (PretrainConfig.flip)
    reasons: tuple[str, ...]


def choose_inputs(cfg: RunConfig, seen: Survey, device: str) -> Inputs:
    """Input size, backbone and its width for the images ``seen`` (a survey of the train split)
    on ``device`` (cpu/cuda); every setting given in ``cfg`` wins over the choice."""
    reasons = []
    if cfg.img_size:
        size = cfg.img_size
        reasons.append(f"{size} px (--img-size)")
    elif seen.native_size:
        size = seen.native_size[0]
        reasons.append(f"{size} px: the images' own size (all sampled are {size}×{size})")
    elif seen.short_side:
        cap = AUTO_SIZE_MAX["cuda" if device == "cuda" else "cpu"]
        reached = [s for s, _ in SIZE_LADDER if s <= min(seen.short_side, cap)] or [32]
        enough = [s for s in reached if (lost := seen.lost_at(s)) is not None
                  and lost <= DETAIL_LOSS]
        size = min(enough) if enough else max(reached)
        why = (f"the smallest side where they lose ≤ {DETAIL_LOSS:.0%} of their variance "
               f"({seen.lost_at(size) or 0:.1%})" if enough else
               f"the largest of {[s for s, _ in SIZE_LADDER]} they reach, at most {cap} on "
               f"{device} (they lose {seen.lost_at(size) or 0:.1%} of their variance there)")
        reasons.append(f"{size} px: the median short side of {len(seen.sizes)} sampled images is "
                       f"{seen.short_side} px; {size} px is {why}")
    else:
        size = 32
        reasons.append("32 px: no image header could be read to choose from")
    if cfg.model:
        model = cfg.model
        reasons.append(f"{model} (--model)")
    else:
        model = next((m for s, m in reversed(SIZE_LADDER) if s <= size), SIZE_LADDER[0][1])
        reasons.append(f"{model}: {FAMILIES[model].doc}, the net for {size} px inputs")
    kwargs = dict(cfg.model_kwargs)
    if model in CPU_WIDTHS and device != "cuda" and "widths" not in kwargs:
        kwargs["widths"] = CPU_WIDTHS[model]
        reasons.append(f"widths {kwargs['widths']} (a quarter of SoftHebb's, for a CPU)")
    if cfg.pool and cfg.pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {cfg.pool!r}")
    with torch.device("meta"):  # its config, and its arguments checked, without its weights
        probe = create_model(model, in_chans=cfg.in_chans or seen.in_chans, img_size=size,
                             **kwargs)
    emb = probe.default_cfg["embedding"]
    layer, pool, grid = cfg.layer or emb["layer"], cfg.pool or emb["pool"], emb.get("grid", 1)
    cells = f" over a {grid}×{grid} grid" if grid > 1 and pool != "flatten" else ""
    # the choice of views is made on the backbone's descriptor, in its PCA's sample
    flip = None if cfg.flip == "auto" and (cfg.pool or cfg.layer or not cfg.descriptor_dims) \
        else cfg.flip
    reasons.append(f"descriptor: {pool}{cells} of {layer}" + (
        " (--pool/--layer)" if cfg.pool or cfg.layer else " (the backbone's default)")
        + _views_text(flip, emb) + (
        f", then its PCA to at most {cfg.descriptor_dims} dimensions, fitted on the training "
        f"images" if cfg.descriptor_dims and not (cfg.pool or cfg.layer) else ""))
    return Inputs(cfg.in_chans or seen.in_chans, size, model, kwargs,
                  cfg.layer, cfg.pool, flip, tuple(reasons))


def _views_text(flip: str | None, emb: dict[str, Any]) -> str:
    """Which views the descriptor sums (``flip``, RunConfig's), said for the report."""
    own = emb.get("flip", "none")
    if flip == "auto" and own != "none":
        return (f", summed over {VIEW_NAMES[own]} or of the image alone, whichever has the "
                f"higher kNN top-1 on held-out rows of its PCA's sample of the training images "
                f"(each backbone's own choice)")
    views = own if flip in (None, "auto") else flip
    return "" if views == "none" else f", summed over {VIEW_NAMES[views]}" + (
        " (--flip)" if flip == views else "")


def run_pipeline(cfg: RunConfig) -> dict[str, Any]:
    """Run every stage for every backbone; write ``OUT/report/``; return the results."""
    if "ssl" in cfg.baselines:
        _check_ssl(cfg.data)
    out = Path(cfg.out)
    (out / "report").mkdir(parents=True, exist_ok=True)
    write_json(out / "report" / "config.json", asdict(cfg))
    train, test, split = resolve_data(cfg, out)
    inputs = choose_inputs(cfg, survey(train[0]), pick_device(cfg.device).type)
    log.info("inputs: %s", "; ".join(inputs.reasons))
    variants = (*VARIANTS, *cfg.baselines)
    rows = {v: _run_variant(cfg, inputs, v, out, train, test) for v in variants}
    results = {"config": asdict(cfg), "inputs": asdict(inputs), "rows": rows,
               "definitions": {v: BACKBONES[v] for v in variants},
               "data": {"train": train[0], "test": test[0], "split": split},
               "verdict": verdict(rows)}
    report = out / "report"
    write_json(report / "results.json", results)
    write_bytes(report / "results.md", results_table(results).encode())
    save_filters(out / "hebbian" / "pretrain", report / "filters.png")
    save_convergence(out / "hebbian" / "pretrain", report / "convergence.png")
    save_retrieval_examples(out / "hebbian" / "index", out / "hebbian" / "emb_test", train, test,
                            report / "retrieval.png", cfg.data_root, inputs.img_size,
                            cfg.queries_shown, cfg.seed)
    return results


def _run_variant(cfg: RunConfig, inputs: Inputs, variant: str, out: Path,
                 train: tuple[str, str], test: tuple[str, str]) -> dict[str, Any]:
    """One backbone of the report; stages with finished outputs are reused (and not timed)."""
    stages = BackboneStages(out / variant, device=cfg.device, quiet=cfg.quiet)
    hebbian = variant == "hebbian"
    if variant == "ssl":
        stages.pretrain(train[0], **_ssl_options(cfg, inputs, out))
    else:
        stages.pretrain(train[0], split=train[1], data_root=cfg.data_root, model=inputs.model,
                        rule=cfg.rule if hebbian else "none",
                        epochs=cfg.pretrain_epochs if hebbian else 1,
                        steps=cfg.pretrain_steps if hebbian else None,
                        lr=cfg.pretrain_lr if hebbian else None,
                        batch_size=cfg.pretrain_batch_size if hebbian else None,
                        in_chans=inputs.in_chans, img_size=inputs.img_size,
                        model_kwargs=inputs.model_kwargs, descriptor_dims=cfg.descriptor_dims,
                        flip=inputs.flip, seed=cfg.seed,
                        # the PCA's sample of the training images is their embedding when it
                        # holds them all and the descriptor is the backbone's own
                        embeddings_out=None if inputs.layer or inputs.pool else
                        str(stages.emb("train")))
    for name, (source, split) in (("train", train), ("test", test)):
        stages.embed(name, source, split=split, data_root=cfg.data_root,
                     batch_size=cfg.embed_batch_size, layer=inputs.layer, pool=inputs.pool)
    stages.index()
    row = stages.all_label_scores(cfg.knn_k, cfg.retrieval_k, cfg.linear_max_iter, cfg.seed)
    with timed(stages.seconds, "fewshot"):
        row["fewshot"] = _fewshot(cfg, stages, train, test)
    row["seconds"] = stages.seconds
    card = read_card(stages.run).training
    pca = card.get("descriptor_pca", {})
    row.update(views=pca.get("flip"), views_knn=pca.get("flip_knn"))
    if "convergence" in card and hebbian:
        row["convergence"] = card["convergence"]
        row["pretrain_steps"] = card["steps"]
    if card.get("kind") == "ssl":
        row.update(method=card["method"], pretrain_steps=card["steps"],
                   budget_s=card["config"]["budget_s"], images_seen=card["images_seen"])
    log.info("%s: %s", variant, {k: v for k, v in row.items() if k != "fewshot"})
    return row


def _check_ssl(data: str) -> None:
    """Before anything is written: the ssl baseline needs lightly and a folder of images."""
    from .ssl import require_lightly

    require_lightly()
    if data in NAMED_DATASETS:
        raise ValueError(f"--baselines ssl trains on an image folder; {data} is a named dataset "
                         f"(give its images as a folder: hebbret run FOLDER --baselines ssl)")


def _ssl_options(cfg: RunConfig, inputs: Inputs, out: Path) -> dict[str, Any]:
    """``train_ssl``'s arguments for the ssl row: BYOL on the Hebbian row's net and inputs, for
    the wall clock (data loading included) its pretraining took, from its model card."""
    from .ssl import backprop_kwargs, train_ssl

    hebbian = read_card(out / "hebbian" / "pretrain").training
    budget = hebbian.get("wall_seconds") or hebbian["train_seconds"]
    return dict(trainer=train_ssl, method=SSL_METHOD, model=inputs.model,
                model_kwargs=backprop_kwargs(inputs.model_kwargs), in_chans=inputs.in_chans,
                img_size=inputs.img_size, descriptor_dims=cfg.descriptor_dims, flip=inputs.flip,
                seed=cfg.seed,
                budget_s=max(float(budget), 0.01))


def _fewshot(cfg: RunConfig, stages: BackboneStages, train: tuple[str, str],
             test: tuple[str, str]) -> dict[str, Any]:
    """Every few-label protocol on this backbone: {protocol: summary of test top-1 over seeds}."""
    fcfg = FewShotConfig(protocols=cfg.protocols, labels_per_class=cfg.labels_per_class,
                         label_fraction=cfg.label_fraction, seeds=cfg.seeds, knn_k=cfg.knn_k)
    results = evaluate_embeddings(stages.emb("train"), stages.emb("test"), fcfg)
    if "full" in cfg.protocols:
        results["full"] = evaluate_full(
            stages.run, train[0], test[0], stages.root, fcfg, train[1], test[1], cfg.data_root,
            dict(epochs=cfg.finetune_epochs, lr=cfg.finetune_lr,
                 backbone_lr_scale=cfg.backbone_lr_scale, batch_size=cfg.finetune_batch_size,
                 augment=cfg.augment), cfg.device, cfg.quiet)
    return {p: results[p]["top1"] for p in cfg.protocols}
