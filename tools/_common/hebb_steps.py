"""The measurements of tools/bench_hebb.py: the fused Hebbian update per layer against the
materialised one, a whole Hebbian step against the GEMM rate and against a backprop step."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from _common.materialised import materialised_delta
from _common.timing import QuietWaiter, timing_samples
from hebbret.hebb.layers import HebbConv2d, HebbLinear
from hebbret.hebb.rules import divide
from hebbret.models import create_model
from hebbret.pretraining import hebbian_step
from hebbret.runtime import memory_format

log = logging.getLogger("bench_hebb")
wait_quiet = QuietWaiter(0.0)  # bench_hebb.main sets the budget


VERIFY_RTOL = 1e-3  # float32: max |materialised − fused| ≤ rtol · max |fused|
HebbLayer = HebbConv2d | HebbLinear


@dataclass
class BenchConfig:
    """What to measure and how hard."""

    batch_size: int = 64  # B of every measurement
    img_size: int = 32  # input is (B, 3, img_size, img_size)
    warmup: int = 2  # untimed calls before each measurement
    repeats: int = 7  # timed samples (each ≥ MIN_SAMPLE_S); the median is reported
    mat_repeats: int = 3  # timed calls of the (slow) materialised method
    mat_budget: float = 4e8  # elements of K×D updates per materialised call: picks how many samples
    mat_warmup: int = 1  # untimed materialised calls
    verify_samples: int = 2  # sub-batch on which materialised and fused ΔW are compared
    verify_crop: int | None = None  # crop that sub-batch to this many pixels a side (None: whole)
    chunk_mb: float = 256.0  # size of one (n_chunk, K, D) float32 chunk of the materialised method
    gemm_sizes: tuple[int, ...] = (2048, 4096)  # square fp32 torch.mm sizes
    gemm_repeats: int = 5  # best of these
    max_wait_s: float = 300.0  # total time to spend waiting for other processes to go quiet
    swta: bool = True  # also benchmark hebb_fasthebb_6l with the swta rule
    channels_last: bool = True  # train steps in the memory format pretraining uses
    seed: int = 0


def time_call(fn: Callable[[], Any], repeats: int, warmup: int) -> dict[str, Any]:
    return timing_samples(fn, repeats, warmup, wait=wait_quiet)


def gemm_gflops(sizes: tuple[int, ...], repeats: int) -> dict[str, dict[str, float]]:
    """Best fp32 rate per square size n in GFLOP/s (2·n³ flops), by two libraries.

    ``mm``: torch.mm (the BLAS, MKL in these wheels; on AMD CPUs MKL takes its AVX2 path).
    ``onednn``: the same product as a 1×1 convolution over 16 images, i.e. the oneDNN kernels the
    Hebbian conv layers run on (PyTorch sends a single-image 1×1 conv on one thread to the BLAS).
    """
    out: dict[str, dict[str, float]] = {"mm": {}, "onednn": {}}
    for n in sizes:
        a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
        t = time_call(lambda a=a, b=b, c=c: torch.mm(a, b, out=c), repeats, warmup=1)["min"]
        out["mm"][str(n)] = 2 * n**3 / t / 1e9
        b = 16 if n % 16 == 0 else 1
        x, w = torch.randn(b, n, 1, n // b), torch.randn(n, n, 1, 1)
        t = time_call(lambda x=x, w=w: F.conv2d(x, w), repeats, warmup=1)["min"]
        out["onednn"][str(n)] = 2 * n**3 / t / 1e9
        log.info("GEMM %d×%d: torch.mm %.1f GFLOP/s, oneDNN 1×1 conv %.1f GFLOP/s", n, n,
                 out["mm"][str(n)], out["onednn"][str(n)])
    return out


def geometry(layer: HebbLayer, x: Tensor) -> dict[str, int]:
    """N, K, D and the shapes of docs/design.md §3 for this layer and input."""
    with torch.no_grad():
        u = layer.preact(layer.pad(x[:1]))
    k = layer.weight.shape[0]
    d = layer.weight[0].numel()
    rows_per_sample = u.numel() // k
    geo = {"B": x.shape[0], "K": k, "D": d, "rows_per_sample": rows_per_sample,
           "N": x.shape[0] * rows_per_sample}
    if isinstance(layer, HebbConv2d):
        geo.update(C=x.shape[1], H=x.shape[2], W=x.shape[3], kh=layer.kernel_size[0],
                   kw=layer.kernel_size[1], Ho=u.shape[2], Wo=u.shape[3])
    return geo


def layer_name(layer: HebbLayer) -> str:
    if isinstance(layer, HebbLinear):
        return f"fc {layer.in_features}→{layer.out_features}"
    kh, kw = layer.kernel_size
    return f"conv{kh}×{kw} {layer.in_channels}→{layer.out_channels}"


def verify_materialised(layer: HebbLayer, x: Tensor, chunk_mb: float) -> dict[str, Any]:
    """Compare the materialised ΔW with ``hebbian_delta`` (each gram method) on the sub-batch x."""
    with torch.no_grad():
        ref = materialised_delta(layer, x, chunk_mb)
        errs = {}
        for gram in _grams(layer):
            with _gram(layer, gram):
                fused = layer.hebbian_delta(x)
            scale = fused.abs().max().clamp_min(1e-30)
            errs[gram] = float((ref - fused).abs().max() / scale)
    worst = max(errs.values())
    return {"samples": x.shape[0], "max_rel_err": worst, "per_gram": errs,
            "ok": bool(math.isfinite(worst) and worst <= VERIFY_RTOL)}


def _grams(layer: HebbLayer) -> tuple[str, ...]:
    return ("conv", "unfold") if isinstance(layer, HebbConv2d) else ("matmul",)


class _gram:
    """Temporarily set a conv layer's Yᵀ X method."""

    def __init__(self, layer: HebbLayer, gram: str) -> None:
        self.layer, self.gram = layer, gram

    def __enter__(self) -> None:
        if isinstance(self.layer, HebbConv2d):
            self.old, self.layer.gram = self.layer.gram, self.gram

    def __exit__(self, *exc: object) -> None:
        if isinstance(self.layer, HebbConv2d):
            self.layer.gram = self.old


def bench_layer(layer: HebbLayer, x: Tensor, cfg: BenchConfig) -> dict[str, Any]:
    """Fused (both gram methods) vs materialised (extrapolated) ΔW for one layer and input."""
    geo = geometry(layer, x)
    flop = 4.0 * geo["N"] * geo["K"] * geo["D"]
    row: dict[str, Any] = {"layer": layer_name(layer), "type": type(layer).__name__,
                           "rule": layer.rule.name, "shape": geo, "gflop": flop / 1e9}

    xv = x[:min(cfg.verify_samples, x.shape[0])]
    if cfg.verify_crop and xv.dim() == 4:
        xv = xv[:, :, :cfg.verify_crop, :cfg.verify_crop]
    row["verify"] = verify_materialised(layer, xv, cfg.chunk_mb)
    log.info("  %s: materialised vs fused max rel err %.2e (%s)", row["layer"],
             row["verify"]["max_rel_err"], "ok" if row["verify"]["ok"] else "MISMATCH")

    fused = {}
    with torch.no_grad():
        for gram in _grams(layer):
            with _gram(layer, gram):
                fused[gram] = time_call(lambda: layer.hebbian_delta(x), cfg.repeats, cfg.warmup)
    best = min(fused, key=lambda g: fused[g]["median"])
    row["fused_s"] = {g: t["median"] for g, t in fused.items()}
    row["fused_timing"] = fused
    row["best_gram"] = best
    row["fused_best_s"] = fused[best]["median"]
    row["fused_gflops"] = flop / fused[best]["median"] / 1e9

    # whole samples where the budget allows, else the first rows of one sample
    per_sample = geo["rows_per_sample"]
    rows = int(max(1, cfg.mat_budget // (geo["K"] * geo["D"])))
    rows = min(geo["N"], rows // per_sample * per_sample if rows >= per_sample else rows)
    xs = x[:math.ceil(rows / per_sample)]
    with torch.no_grad():
        mat = time_call(lambda: materialised_delta(layer, xs, cfg.chunk_mb, max_rows=rows),
                        cfg.mat_repeats, warmup=cfg.mat_warmup)
    samples = rows / per_sample
    row["mat_samples"] = samples
    row["mat_rows"] = rows
    row["mat_measured_s"] = mat["median"]
    row["mat_extrapolated_s"] = mat["median"] * geo["N"] / rows
    row["speedup"] = row["mat_extrapolated_s"] / row["fused_best_s"]
    log.info("  %s: fused %s %.4fs (conv %.4f / unfold %s), materialised ≈ %.3fs "
             "(%.3g samples, extrapolated) → %.0f×", row["layer"], best, row["fused_best_s"],
             fused[_grams(layer)[0]]["median"],
             f"{fused['unfold']['median']:.4f}" if "unfold" in fused else "-",
             row["mat_extrapolated_s"], samples, row["speedup"])
    return row


def set_plastic(model: nn.Module, plastic: bool) -> None:
    for layer in model.hebb_layers():
        layer.plastic = plastic


def backprop_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()


def step_breakdown(model: nn.Module, x: Tensor, lrs: list[float],
                   cfg: BenchConfig) -> list[dict[str, Any]]:
    """Median time of every piece of the Hebbian step, block by block, on the real activations.

    A Hebbian layer is split into pad / forward conv / rule terms (Y, M) / Yᵀ X / M W /
    response / weight update; every other module of a block (BN, activation, pool) is one row.
    """
    reps, warm = cfg.repeats, min(cfg.warmup, 1)
    out = []
    layers = model.hebb_layers()
    with torch.no_grad():
        for bi, block in enumerate(model.blocks):
            children = list(block) if isinstance(block, nn.Sequential) else [block]
            for child in children:
                if isinstance(child, (HebbConv2d, HebbLinear)):
                    lr = lrs[layers.index(child)]
                    for part, secs, gflop in _layer_parts(child, x, lr, reps, warm):
                        out.append({"block": bi, "part": part, "module": layer_name(child),
                                    "s": secs, "gflop": gflop})
                    x = child(x)
                else:
                    secs = time_call(lambda c=child, x=x: c(x), reps, warm)["median"]
                    out.append({"block": bi, "part": type(child).__name__, "module": "", "s": secs,
                                "gflop": 0.0})
                    x = child(x)
    return out


def _layer_parts(layer: HebbLayer, x: Tensor, lr: float, reps: int,
                 warm: int) -> list[tuple[str, float, float]]:
    """(part, seconds, GFLOP) for the pieces of one plastic Hebbian layer's forward and update."""
    geo = geometry(layer, x)
    fl = 2.0 * geo["N"] * geo["K"] * geo["D"] / 1e9
    xp = layer.pad(x)
    u = layer.preact(xp)
    terms = layer.rule_terms(xp, u)
    yx = layer.yt_x(xp, terms.y)
    delta = divide(layer.minus_decay(yx, terms), terms.den)
    scratch = layer.weight.detach().clone()
    parts = [
        ("pad", lambda: layer.pad(x), 0.0),
        ("forward conv", lambda: layer.preact(xp), fl),
        ("rule terms", lambda: layer.rule_terms(xp, u), 0.0),
        (f"YᵀX ({getattr(layer, 'gram', 'matmul')})", lambda: layer.yt_x(xp, terms.y), fl),
        ("− M W", lambda: divide(layer.minus_decay(yx, terms), terms.den), 0.0),
        ("response", lambda: layer.respond(u), 0.0),
        ("weight update", lambda: scratch.add_(lr * layer.update_direction(delta)), 0.0),
    ]
    return [(name, time_call(fn, reps, warm)["median"], g) for name, fn, g in parts]


def bench_steps(cfg: BenchConfig, gemm_best: float) -> dict[str, Any]:
    """Hebbian vs backprop step of hebb_softhebb_c3 at batch ``cfg.batch_size``."""
    torch.manual_seed(cfg.seed)
    base = create_model("hebb_softhebb_c3", img_size=cfg.img_size).train()
    x = torch.randn(cfg.batch_size, 3, cfg.img_size, cfg.img_size)
    labels = torch.randint(0, base.num_classes, (cfg.batch_size,))
    lrs = base.hebbian_lrs()

    inputs = base.hebb_inputs(x)
    flop = sum(4.0 * math.prod(geometry(m, xi)[k] for k in ("N", "K", "D"))
               for m, xi in zip(base.hebb_layers(), inputs, strict=True))

    # both steps as training runs them: channels-last activations (PretrainConfig.channels_last)
    fmt = memory_format(cfg.channels_last)
    x = x.contiguous(memory_format=fmt)
    hebb = copy.deepcopy(base).to(memory_format=fmt)
    hebb_opt = torch.optim.SGD([{"params": [m.weight], "lr": lr}
                                for m, lr in zip(hebb.hebb_layers(), lrs, strict=True)])
    active = list(range(len(lrs)))
    log.info("Hebbian step of hebb_softhebb_c3, batch %d", cfg.batch_size)
    t_hebb = time_call(lambda: hebbian_step(hebb, hebb_opt, x, active), cfg.repeats, cfg.warmup)

    bp = copy.deepcopy(base).to(memory_format=fmt)
    set_plastic(bp, False)
    opt = torch.optim.SGD(bp.parameters(), lr=1e-3, momentum=0.9)
    log.info("backprop step of hebb_softhebb_c3, batch %d", cfg.batch_size)
    t_bp = time_call(lambda: backprop_step(bp, opt, x, labels), cfg.repeats, cfg.warmup)

    log.info("Hebbian step breakdown")
    brk_model = copy.deepcopy(base)
    set_plastic(brk_model, True)
    breakdown = step_breakdown(brk_model, x, lrs, cfg)

    gflops = flop / t_hebb["median"] / 1e9
    return {
        "model": "hebb_softhebb_c3", "rule": "softhebb", "batch_size": cfg.batch_size,
        "channels_last": cfg.channels_last,
        "grams": [getattr(m, "gram", "matmul") for m in base.hebb_layers()],
        "essential_gflop": flop / 1e9,
        "hebbian_s": t_hebb["median"], "hebbian_timing": t_hebb,
        "hebbian_gflops": gflops,
        "hebbian_gemm_fraction": gflops / gemm_best,
        "backprop_s": t_bp["median"], "backprop_timing": t_bp,
        "hebb_over_backprop": t_hebb["median"] / t_bp["median"],
        "breakdown": breakdown,
        "breakdown_sum_s": sum(r["s"] for r in breakdown),
    }
