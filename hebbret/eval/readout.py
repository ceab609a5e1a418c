"""SoftHebb's linear readout (Journé et al. 2023), as its paper trains it: the published
protocol that the CIFAR-10 readout numbers reproduce, so it keeps its own optimiser."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .features import accuracy, check_labeled

SOFTHEBB_MILESTONES = (10, 17, 25, 30, 35, 40, 45)


def softhebb_readout(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray,
                     test_labels: np.ndarray, epochs: int = 50, batch_size: int = 64,
                     lr: float = 1e-3, dropout: float = 0.5,
                     milestones: Sequence[int] = SOFTHEBB_MILESTONES,
                     init_scale: float | None = 0.1105, seed: int = 0) -> dict[str, Any]:
    """SoftHebb's linear readout (Journé et al. 2023) on frozen features, as they come.

    Dropout ``dropout`` -> linear layer (weights ``init_scale``·U(0, 1) and bias 0, as in
    SoftHebb's demo; ``init_scale=None``: weights and bias U(±1/√D), nn.Linear's default, as in
    SoftHebb's full code),
    Adam ``lr``, cross-entropy, ``epochs`` epochs of batches of ``batch_size``, learning rate
    halved at each of ``milestones``; no feature normalisation, no validation split, the final
    model is tested once. Features: (N, D) float32 or float16 (held in memory in their dtype).

    Returns:
        {"top1", "top5", "train_top1_last_epoch", "train_loss_last_epoch", protocol fields}
    """
    check_labeled(train_feats, train_labels, "train")
    check_labeled(test_feats, test_labels, "test")
    if train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"train dimension {train_feats.shape[1]} != test dimension "
                         f"{test_feats.shape[1]}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    held = torch.from_numpy(np.array(train_feats))
    labels = torch.as_tensor(np.asarray(train_labels, dtype=np.int64))
    g = torch.Generator().manual_seed(seed)
    head = _initial_head(held.shape[1], int(labels.max()) + 1, init_scale, g)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(milestones), gamma=0.5)
    correct = seen = 0
    total_loss = 0.0
    for _ in range(epochs):
        perm = torch.randperm(len(held), generator=g)
        correct = seen = 0
        total_loss = 0.0
        for i in range(0, len(perm), batch_size):
            take = perm[i: i + batch_size]
            xb = held[take].float()
            if dropout:  # a torch.rand mask: F.dropout's bernoulli_ is ~5x slower on CPU
                keep = torch.rand(xb.shape, generator=g) >= dropout
                xb = xb.mul_(keep).mul_(1.0 / (1.0 - dropout))
            logits = head(xb)
            loss = F.cross_entropy(logits, labels[take])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total_loss += loss.item() * len(take)
            correct += int((logits.argmax(1) == labels[take]).sum())
            seen += len(take)
        sched.step()
    top1, top5 = accuracy(lambda part: head(torch.from_numpy(np.array(part, dtype=np.float32))),
                          test_feats, test_labels)
    return {"top1": top1, "top5": top5,
            "train_top1_last_epoch": 100.0 * correct / max(seen, 1),
            "train_loss_last_epoch": total_loss / max(seen, 1), "epochs": epochs,
            "batch_size": batch_size, "optimizer": f"Adam lr {lr}", "dropout": dropout,
            "lr_halved_at": list(milestones), "features": "as extracted (no normalisation)",
            "init": ("U(±1/√D), nn.Linear's default" if init_scale is None
                     else f"{init_scale}·U(0, 1), bias 0")}


def _initial_head(dim: int, classes: int, init_scale: float | None,
                  g: torch.Generator) -> torch.nn.Linear:
    """dim -> classes; weights init_scale·U(0, 1) and bias 0 (SoftHebb's demo), or U(±1/√D)
    for both (nn.Linear's default, SoftHebb's full code) when ``init_scale`` is None."""
    head = torch.nn.Linear(dim, classes)
    with torch.no_grad():
        if init_scale is None:
            bound = dim ** -0.5
            head.weight.uniform_(-bound, bound, generator=g)
            head.bias.uniform_(-bound, bound, generator=g)
        else:
            head.weight.copy_(init_scale * torch.rand(head.weight.shape, generator=g))
            head.bias.zero_()
    return head
