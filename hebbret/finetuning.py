"""Few-label supervised fine-tuning of a backbone, and the from-scratch baseline.

``full`` is FastHebb's semi-supervised protocol: backbone + dropout 0.5 + linear head trained
end-to-end with SGD (momentum 0.9, Nesterov, lr 1e-3, weight decay 5e-4, 20 epochs, the lr halved
every epoch from the second half on). ``linear`` trains only the head on the frozen backbone
(BatchNorm statistics frozen too). ``from_scratch`` trains the same architecture from random
weights with the same protocol: the baseline every Hebbian result stands beside.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._io import write_json, write_jsonl
from .artifacts import RUN_CONFIG, TRAIN_LOG, is_complete
from .config import FewShotConfig, FinetuneConfig
from .data import SkippedFiles, few_label_rows, make_loader, open_dataset
from .embed import fit_descriptor_pca
from .eval.embeddings import aligned_labels
from .eval.features import summarize, top1_top5_hits
from .models import HebbNet, create_model
from .progress import progress
from .runs import load_run, read_card, save_run
from .runtime import keep_freed_memory, pick_device, release_freed_memory

log = logging.getLogger(__name__)


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop from a reflect-padded image and random horizontal flip: (B, C, H, W).

    The offsets and flips are drawn on the CPU from ``generator`` (the same draws on every
    device); the crops are one gather on ``x``'s device, no per-sample loop.
    """
    b, _, h, w = x.shape
    pad = max(1, min(h, w) // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    cols = torch.arange(w)
    rows = (dy[:, None] + torch.arange(h)).to(x.device)  # (B, H)
    cols = (dx[:, None] + torch.where(flip[:, None], cols.flip(0), cols)).to(x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    # (B, H+2p, W+2p, C)[batch, rows, cols] -> (B, H, W, C)
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def finetune(config: FinetuneConfig | None = None, **overrides: Any) -> Path:
    """Train a run's backbone with labels; returns the new run dir (which records its parent).

    Writes ``model.safetensors``, ``model.json``, ``config.json``, ``log.jsonl`` (one line per
    epoch) and ``labeled_items.jsonl`` (the labeled items used, for auditing).
    """
    cfg = FinetuneConfig(**{**(asdict(config) if config else {}), **overrides})
    if not cfg.data:
        raise ValueError("no labeled data given: pass DATA or set data in --config")
    parent, card = load_run(cfg.run)
    torch.manual_seed(cfg.seed)
    if cfg.from_scratch:
        model = create_model(card.architecture, **card.model_args)
        model.stem.load_state_dict(parent.stem.state_dict())  # fixed preprocessing, not learned
    else:
        model = parent
    spec = card.input
    dataset = open_dataset(cfg.data, cfg.split, spec.in_chans, spec.img_size,
                           cfg.data_root, mean=spec.mean, std=spec.std)
    labels = dataset.labels
    if labels.min() < 0:
        raise ValueError(f"{cfg.data} is unlabeled; fine-tuning needs class sub-folders")
    if cfg.labels_per_class is None and cfg.label_fraction is None:
        rows = np.arange(len(dataset))
    else:
        rows = few_label_rows(labels, cfg.labels_per_class, cfg.label_fraction, cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / RUN_CONFIG, asdict(cfg))
    write_jsonl(out / "labeled_items.jsonl", [
        {"row": int(r), "path": dataset.items[r].path, "label": dataset.items[r].label}
        for r in rows])
    model.reset_classifier(len(dataset.classes))
    device = pick_device(cfg.device)
    if device.type == "cpu":
        keep_freed_memory()
    model.to(device)
    history = _train(model, dataset, rows, cfg, device)
    # a backbone that learned no longer fits its parent's descriptor PCA: fit it again
    pca = {"dims": model.descriptor_pca.dims}
    if card.embedding.dims and (cfg.from_scratch or cfg.mode != "linear"):
        pca, _ = fit_descriptor_pca(model, dataset, card.embedding.dims, cfg.seed, device,
                                    quiet=cfg.quiet)
    write_jsonl(out / TRAIN_LOG, history)
    training = {"kind": "finetune-from-scratch" if cfg.from_scratch else f"finetune-{cfg.mode}",
                "parent_run": str(Path(cfg.run).resolve()),
                "parent_sha256": card.weights_sha256, "labeled_items": len(rows),
                "classes": dataset.classes, **asdict(cfg),
                "final_train_loss": history[-1]["loss"] if history else None,
                "train_seconds": round(sum(h["seconds"] for h in history), 2),
                "descriptor_pca": pca}
    save_run(model.cpu().eval(), out, training=training)
    release_freed_memory()
    log.info("wrote %s (%d labeled items, %d epochs)", out, len(rows), cfg.epochs)
    return out


def _train(model: HebbNet, dataset, rows: np.ndarray, cfg: FinetuneConfig,
           device: torch.device) -> list[dict[str, Any]]:
    linear = cfg.mode == "linear" and not cfg.from_scratch
    opt, sched = _optimizer(model, cfg, linear)
    gen = torch.Generator().manual_seed(cfg.seed)
    skipped = SkippedFiles(dataset)
    history = []
    bar = progress(total=cfg.epochs * len(rows), unit="img", unit_scale=True, quiet=cfg.quiet,
                   desc=f"finetune-{'linear' if linear else 'full'}")
    with bar:
        for epoch in range(cfg.epochs):
            if linear:  # frozen backbone, BatchNorm statistics included; dropout stays on
                model.eval()
                model.head_drop.train()
            else:
                model.train()
            t0 = time.perf_counter()
            total_loss, correct, seen = 0.0, 0, 0
            for batch in make_loader(dataset, cfg.batch_size, cfg.seed, epoch=epoch,
                                     num_workers=cfg.num_workers, rows=rows, device=device):
                skipped.add(batch.skipped)
                bar.update(len(batch.images) + len(batch.skipped))
                if not len(batch.images):
                    continue
                x, y = batch.images.to(device), batch.labels.to(device)
                if cfg.augment:
                    x = augment_batch(x, gen)
                if linear:
                    with torch.no_grad():
                        feats = model.forward_features(x)
                    logits = model.forward_head(feats)
                else:
                    logits = model(x)
                loss = F.cross_entropy(logits, y)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"fine-tuning loss became {loss.item()} at epoch "
                                             f"{epoch}; try a lower --lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total_loss += loss.item() * len(y)
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
            sched.step()
            row = {"epoch": epoch, "loss": total_loss / max(seen, 1),
                   "train_top1": 100.0 * correct / max(seen, 1), "lr": opt.param_groups[0]["lr"],
                   "seconds": round(time.perf_counter() - t0, 3), "skipped_files": skipped.count}
            history.append(row)
            log.debug("epoch %d: %s", epoch, json.dumps(row))
    for p in model.parameters():
        p.requires_grad_(True)
    return history


def _optimizer(model: HebbNet, cfg: FinetuneConfig, linear: bool
               ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD (Nesterov) over the head, and the backbone at lr × backbone_lr_scale unless
    ``linear``; the others frozen. The rate halves every epoch of the second half."""
    head = list(model.get_classifier().parameters())
    backbone = [] if linear else [p for p in model.parameters()
                                  if all(p is not q for q in head)]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in head + backbone:
        p.requires_grad_(True)
    groups = [{"params": head}]
    if backbone:
        groups.append({"params": backbone, "lr": cfg.lr * cfg.backbone_lr_scale})
    opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                          weight_decay=cfg.weight_decay)
    half = max(1, cfg.epochs // 2)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(range(half, cfg.epochs)),
                                                 gamma=0.5)
    return opt, sched


@torch.no_grad()
def evaluate_classifier(run: str | os.PathLike, data: str, split: str = "test",
                        data_root: str | None = None, batch_size: int = 256,
                        device: str = "auto") -> dict[str, Any]:
    """Top-1 / top-5 accuracy (%) of a fine-tuned run's classifier on a labeled dataset."""
    model, card = load_run(run)
    spec = card.input
    dataset = open_dataset(data, split, spec.in_chans, spec.img_size, data_root,
                           mean=spec.mean, std=spec.std)
    trained_on = card.trained_classes
    remap = torch.as_tensor(aligned_labels([{"label": i} for i in range(len(dataset.classes))],
                                           dataset.classes, trained_on, str(data)))
    dev = pick_device(device)
    model.to(dev).eval()
    skipped = SkippedFiles(dataset)
    top1 = top5 = n = 0
    for batch in make_loader(dataset, batch_size, device=dev):
        skipped.add(batch.skipped)
        if not len(batch.images):
            continue
        logits = model(batch.images.to(dev))
        truth = remap[batch.labels].to(dev)  # in the classifier's class order
        h1, h5 = top1_top5_hits(logits, truth)
        top1, top5, n = top1 + h1, top5 + h5, n + len(truth)
    if n == 0:
        raise ValueError(f"none of the files under {dataset.root} could be decoded")
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "count": n,
            "skipped_files": skipped.count}


def evaluate_full(run: str | os.PathLike, data: str, test_data: str, out: str | os.PathLike,
                  cfg: FewShotConfig, split: str = "train", test_split: str = "test",
                  data_root: str | None = None, finetune_options: dict[str, Any] | None = None,
                  device: str = "auto", quiet: bool = False) -> dict[str, Any]:
    """The ``full`` protocol: one fine-tuned run per seed in ``OUT/full-seed<S>`` (reused when
    complete), each tested with its own classifier: {"seeds": {seed: result}, "top1": summary}."""
    per_seed = {}
    for seed in cfg.seeds:
        tuned = Path(out) / f"full-seed{seed}"
        if not is_complete(tuned):
            finetune(run=str(run), data=data, split=split, data_root=data_root,
                     labels_per_class=cfg.labels_per_class, label_fraction=cfg.label_fraction,
                     mode="full", seed=seed, out=str(tuned), device=device, quiet=quiet,
                     **(finetune_options or {}))
        acc = evaluate_classifier(tuned, test_data, test_split, data_root, device=device)
        per_seed[seed] = {"labeled": read_card(tuned).training["labeled_items"],
                          "top1": acc["top1"], "top5": acc["top5"]}
    return {"seeds": per_seed, "top1": summarize([r["top1"] for r in per_seed.values()])}
