"""The two steps tools/bench_softhebb.py times, each built in its own process: SoftHebb's demo
step, driven through its module's own classes, and hebbret's step as ``pretrain`` takes it."""

from __future__ import annotations

import importlib.util
import math
from typing import Any

import torch

from _common.hebb_steps import geometry

MODEL = "hebb_softhebb_c3"  # the same net as SoftHebb's DeepSoftHebb (96, 384, 1536 channels)


def essential_gflop(batch: int) -> float:
    """4·N·K·D over the Hebbian layers of one step at ``batch`` (the forward pass and Yᵀ X)."""
    from hebbret.models import create_model

    model = create_model(MODEL).eval()
    x = torch.zeros(batch, 3, 32, 32)
    return sum(4.0 * math.prod(geometry(m, xi)[k] for k in ("N", "K", "D"))
               for m, xi in zip(model.hebb_layers(), model.hebb_inputs(x), strict=True)) / 1e9


def softhebb_step(path: str) -> Any:
    """SoftHebb's demo net and its training step, driven through the demo module's own API."""
    base = torch.optim.lr_scheduler._LRScheduler

    class OldScheduler(base):  # the torch API the demo was written for: a `verbose` argument,
        # and per-neuron tensor rates assigned to the groups (newer torch fills 0-d ones only)
        def __init__(self, optimizer: Any, last_epoch: int = -1, verbose: Any = None) -> None:
            super().__init__(optimizer, last_epoch)

        def _update_lr(self, epoch: Any = None) -> None:
            self.last_epoch += 1
            self._get_lr_called_within_step = True
            for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
                group["lr"] = lr
            self._get_lr_called_within_step = False

    spec = importlib.util.spec_from_file_location("softhebb_demo", path)
    demo = importlib.util.module_from_spec(spec)
    torch.optim.lr_scheduler._LRScheduler = OldScheduler
    try:
        spec.loader.exec_module(demo)
    finally:
        torch.optim.lr_scheduler._LRScheduler = base
    model = demo.DeepSoftHebb().train()
    lrs = (0.08, 0.005, 0.01)  # the demo's rates, given negated (its SGD does descent)
    opt = demo.TensorLRSGD([{"params": conv.parameters(), "lr": -lr} for conv, lr in
                            zip((model.conv1, model.conv2, model.conv3), lrs, strict=True)], lr=0)
    sched = demo.WeightNormDependentLR(opt, power_lr=0.5)

    def step(x: torch.Tensor) -> None:
        opt.zero_grad()
        with torch.no_grad():
            model(x)
        opt.step()
        sched.step()
    return step, lambda: {}


def hebbret_step(precision: str, compiled: bool) -> Any:
    """hebbret's step as ``pretrain`` takes it; returns (step, what the compilation reported)."""
    from hebbret.models import create_model
    from hebbret.pretraining import CompiledStep, hebbian_step

    model = create_model(MODEL).train().to(memory_format=torch.channels_last)
    layers = model.hebb_layers()
    opt = torch.optim.SGD([{"params": [la.weight], "lr": lr}
                           for la, lr in zip(layers, model.hebbian_lrs(), strict=True)])
    ok = torch.ones((), dtype=torch.bool)
    step_c = CompiledStep(torch.device("cpu")) if compiled else None
    autocast = torch.bfloat16 if precision == "bf16" else None
    active = list(range(len(layers)))

    def step(x: torch.Tensor) -> None:
        hebbian_step(model, opt, x, active, autocast, ok=ok, compiled=step_c)
    return step, lambda: {} if step_c is None else step_c.describe()
