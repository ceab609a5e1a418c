"""Unsupervised Hebbian training: a backbone learns from unlabeled images, no autograd.

Each step is one forward pass in which every active Hebbian layer computes its fused FastHebb
update ΔW from its own input and output, then an SGD step with gradient −(rule direction).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from ._io import atomic_path, read_json, read_jsonl, write_json, write_jsonl
from .artifacts import META, RUN_CONFIG, TRAIN_LOG, TRAIN_STATE, WEIGHTS
from .compiling import Compiled, compile_wanted
from .config import PRECISIONS, PretrainConfig
from .data import ImageDataset, SkippedFiles, make_loader, native_format, open_dataset
from .distributed import (
    ShardSum,
    World,
    barrier,
    check_same_data,
    join,
    main_first,
    on_main,
    sharded_forward,
    union_rows,
)
from .embed import fit_descriptor_pca, write_sample_embeddings
from .hebb.layers import HebbConv2d, HebbLinear
from .hebb.rules import neuron_norms
from .models import HebbNet, PatchWhitening, create_model
from .progress import progress
from .runs import save_run
from .runtime import keep_freed_memory, memory_format, pick_device, release_freed_memory

log = logging.getLogger(__name__)


# Fields that must not change when a run is resumed.
_RUN_IDENTITY = ("data", "data_root", "model", "rule", "epochs", "batch_size", "lr", "mode", "seed",
                 "split", "in_chans", "img_size", "model_kwargs", "channels_last", "precision",
                 "steps")


CALIBRATION_BATCH = 256  # default batch of a rule-none pass (BatchNorm calibration only)
WHITENING_IMAGES = 5000  # a whitening stem is fitted on the first whole batches of 256 that reach
#                           this many images (5,120 when the collection has them)


class NonFiniteUpdate(FloatingPointError):
    """A Hebbian update or weight became NaN/inf; the run dir keeps its last good checkpoint."""


def hebbian_step(model: HebbNet, optimizer: torch.optim.Optimizer,
                 x: torch.Tensor | list[torch.Tensor], active: list[int],
                 autocast: torch.dtype | None = None, measure: bool = False,
                 ok: torch.Tensor | None = None, reduce: ShardSum | None = None,
                 compiled: CompiledStep | None = None) -> list[dict[str, Any]]:
    """One Hebbian step on batch ``x`` (B, C, H, W) for the layers numbered in ``active``.

    ``reduce`` (data parallel, :mod:`hebbret.distributed`): ``x`` is this process's shard of
    the global batch (or a list of shards), BatchNorm and ΔW are computed over the global batch
    and every process applies the same update.

    ``autocast``: run the forward pass and the Yᵀ X products in this dtype (torch.bfloat16);
    rule terms, ΔW and the weights stay float32.

    ``compiled`` (:class:`CompiledStep`, one per model): the same step compiled, equal to eager
    within float32 rounding; with ``reduce`` the sharded forward pass and its reductions stay
    eager and the update directions and statistics are compiled.

    Blocks below the lowest active layer run in eval mode, so a greedy phase normalises with
    the BatchNorm statistics its finished blocks learned (SoftHebb's successive training).

    Returns per active layer: max|ΔW|, the mean neuron norm after the step and, with
    ``measure``, ``distance``: how far the layer is from its rule's fixed point
    (:attr:`Rule.distance`, after the step).

    Without ``ok``: the values are floats and a non-finite update raises NonFiniteUpdate before
    touching the weights. With ``ok`` (a bool 0-d tensor on the model's device), nothing waits
    for the device: the values stay 0-d tensors, the update is applied only while ``ok`` holds,
    and ``ok`` is and-ed in place with "every update and weight of this step is finite" — once
    False it stays False and the weights stop changing; the caller checks it when it syncs.
    """
    layers = model.hebb_layers()
    for i, layer in enumerate(layers):
        layer.plastic = i in active
    frozen = [block for block in model.blocks[:min(active)] if block.training]
    for block in frozen:
        block.eval()
    try:
        with torch.no_grad():
            if reduce is None:
                step = compiled.core if compiled is not None else _step_core
                deltas, maxes, now_ok, dirs = step(
                    model, x[0] if isinstance(x, list) else x, tuple(active), autocast, ok)
            else:
                deltas, maxes, now_ok, dirs = _sharded_core(model, x, tuple(active), autocast,
                                                            ok, reduce, compiled)
            maxes = _checked_sizes(active, layers, maxes, ok, now_ok, compiled)
            for i, direction in zip(active, dirs, strict=True):
                layers[i].weight.grad = direction
            optimizer.step()
            weights = [layers[i].weight for i in active]
            norms, w_ok = (compiled.after if compiled is not None else _weight_stats)(weights)
            return _step_stats(active, layers, maxes, norms, w_ok, deltas, measure, ok, compiled)
    finally:
        for layer in layers:
            layer.plastic, layer.delta, layer.weight.grad = False, None, None
        for block in frozen:
            block.train()


def _sharded_core(model: HebbNet, x: Tensor | list[Tensor], active: tuple[int, ...],
                  autocast: torch.dtype | None, ok: Tensor | None, reduce: ShardSum,
                  compiled: CompiledStep | None = None
                  ) -> tuple[list[Tensor], list[Tensor], Tensor | None, list[Tensor]]:
    """:func:`_step_core` of a data-parallel step: ``x`` is this process's shard(s); the
    forward pass and its reductions run eager, :func:`_directions` compiled when ``compiled``."""
    shards = x if isinstance(x, list) else [x]
    with torch.autocast(shards[0].device.type, dtype=autocast or torch.bfloat16,
                        enabled=autocast is not None):
        sharded_forward(model, shards, reduce, upto=max(active))
    layers = model.hebb_layers()
    step = compiled.directions if compiled is not None else _directions
    return step(layers, active, [layers[i].delta for i in active], ok)


def _step_core(model: HebbNet, x: Tensor, active: tuple[int, ...], autocast: torch.dtype | None,
               ok: Tensor | None
               ) -> tuple[list[Tensor], list[Tensor], Tensor | None, list[Tensor]]:
    """The forward pass of ``x`` (B, C, H, W) up to the last active layer, then
    :func:`_directions`: what :class:`CompiledStep` compiles."""
    with torch.autocast(x.device.type, dtype=autocast or torch.bfloat16,
                        enabled=autocast is not None):
        model.forward_blocks(x, upto=max(active))
    layers = model.hebb_layers()
    return _directions(layers, active, [layers[i].delta for i in active], ok)


def _directions(layers: list[HebbConv2d | HebbLinear], active: tuple[int, ...],
                deltas: list[Tensor], ok: Tensor | None
                ) -> tuple[list[Tensor], list[Tensor], Tensor | None, list[Tensor]]:
    """Per active layer: ΔW, max|ΔW| (0-d; NaN/inf propagate into it) and the step's gradient
    −(rule direction); ``ok`` and-ed with "every max is finite" (None without ``ok``).
    With ``ok``, the gradients are zero unless the new ``ok`` holds (where, not a product:
    NaN · 0 is NaN)."""
    maxes = [d.abs().amax() for d in deltas]
    now_ok = None if ok is None else ok & torch.stack([torch.isfinite(m) for m in maxes]).all()
    dirs = []
    for i, delta in zip(active, deltas, strict=True):
        direction = layers[i].update_direction(delta).neg_()
        if now_ok is not None:
            direction = torch.where(now_ok, direction, torch.zeros_like(direction))
        dirs.append(direction)
    return deltas, maxes, now_ok, dirs


def _checked_sizes(active: list[int], layers: list[HebbConv2d | HebbLinear], maxes: list[Tensor],
                   ok: Tensor | None, now_ok: Tensor | None, compiled: CompiledStep | None) -> list[Any]:
    """max|ΔW| per active layer: floats, raising NonFiniteUpdate on a non-finite one; with
    ``ok``: 0-d tensors, ``ok`` set to ``now_ok`` in place."""
    if ok is not None:
        ok.copy_(now_ok)
        return [compiled.keep(m) for m in maxes] if compiled is not None else maxes
    values = torch.stack(maxes).tolist()
    for i, m in zip(active, values, strict=True):
        if not math.isfinite(m):
            raise NonFiniteUpdate(f"Hebbian layer {i} ({layers[i].rule.name}) "
                                  f"produced a non-finite update")
    return values


def _weight_stats(weights: list[Tensor]) -> tuple[list[Tensor], Tensor]:
    """After the update: each weight's mean neuron norm (0-d) and whether it is all finite (L,)."""
    return ([neuron_norms(w).mean() for w in weights],
            torch.stack([torch.isfinite(w).all() for w in weights]))


def _step_stats(active: list[int], layers: list[HebbConv2d | HebbLinear], maxes: list[Any],
                norms: list[Tensor], w_ok: Tensor, deltas: list[Tensor], measure: bool,
                ok: Tensor | None, compiled: CompiledStep | None) -> list[dict[str, Any]]:
    """What :func:`hebbian_step` returns (floats without ``ok``, raising on non-finite weights;
    with it, 0-d tensors and ``ok`` and-ed in place)."""
    if ok is None:
        for i, good in zip(active, w_ok.tolist(), strict=True):
            if not good:
                raise NonFiniteUpdate(f"Hebbian layer {i} has non-finite weights")
    else:
        ok &= w_ok.all()
    out = []
    for i, m, norm, delta in zip(active, maxes, norms, deltas, strict=True):
        layer = layers[i]
        s = {"layer": i, "max_delta": m,
             "norm_mean": compiled.keep(norm) if compiled is not None else norm}
        if measure and layer.rule.distance is not None:
            s["distance"] = layer.rule.distance(layer.weight, delta)
        if ok is None:
            s = {k: v if isinstance(v, (int, float)) else float(v) for k, v in s.items()}
        out.append(s)
    return out


class CompiledStep:
    """The compiled pieces of :func:`hebbian_step` for one model: the forward pass with the
    update directions (:func:`_step_core`; under torchrun, where the forward pass reduces
    across processes, only the directions, :func:`_directions`) and the statistics after the
    update (:func:`_weight_stats`); each falls back to eager with one warning
    (:class:`Compiled`); after a fallback the statistics run eager without a second warning."""

    def __init__(self, device: torch.device, backend: str = "inductor") -> None:
        self.core = Compiled(_step_core, device, backend)
        self.directions = Compiled(_directions, device, backend)
        self.stats = Compiled(_weight_stats, device, backend, starts_step=False)
        self.pieces = (self.core, self.directions, self.stats)

    def after(self, weights: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        """:func:`_weight_stats`, eager without a second warning when a piece fell back."""
        failed = next((p.failed for p in self.pieces if p.failed is not None), None)
        if failed is not None and self.stats.failed is None:
            self.stats.failed = failed
        return self.stats(weights)

    def keep(self, t: Tensor) -> Tensor:
        return self.core.keep(t)

    def describe(self) -> dict[str, Any]:
        """For logs and the model card: compiled or not (every piece the run used), the mode,
        the seconds compiling took."""
        used = [p.describe() for p in self.pieces if p.keys or p.failed is not None]
        return {**self.core.describe(),
                "compiled": bool(used) and all(d["compiled"] for d in used),
                "compile_seconds": round(sum(d["compile_seconds"] for d in used), 1),
                "failed": next((d["failed"] for d in used if d["failed"]), None)}


def _resolve(cfg: PretrainConfig) -> tuple[dict[str, Any], ImageDataset]:
    """Fill the backbone defaults into a config; returns the resolved fields and the dataset.

    The step budget per phase: ``steps`` if given; else ``epochs`` passes over the data if
    given; else the backbone's default epochs, but at least its ``min_steps`` (small collections
    repeat until the rule has had the steps it needs to converge).
    """
    chans, size = native_format(cfg.data)
    in_chans = cfg.in_chans or chans
    img_size = cfg.img_size or (size[0] if size else None)  # None: the backbone's own
    probe = create_model(cfg.model, in_chans=in_chans,
                         **({"img_size": img_size} if img_size else {}), **cfg.model_kwargs)
    dcfg = probe.default_cfg
    img_size = dcfg["input_size"][1]
    hebb = dcfg["hebb"]
    n_layers = len(probe.hebb_layers())
    rule = cfg.rule or hebb["rule"]
    lr = cfg.lr if cfg.lr is not None else probe.hebbian_lrs(rule)
    if len(lr) == 1:
        lr = list(lr) * n_layers
    if len(lr) != n_layers:
        raise ValueError(f"{cfg.model} has {n_layers} Hebbian layers; give one learning rate or "
                         f"{n_layers}, got {len(lr)}")
    dataset = open_dataset(cfg.data, cfg.split, in_chans, img_size, cfg.data_root,
                           mean=dcfg["mean"], std=dcfg["std"])
    # rule none learns nothing: its pass only calibrates BatchNorm, in large batches
    batch_size = cfg.batch_size or (CALIBRATION_BATCH if rule == "none" else hebb["batch_size"])
    per_epoch = math.ceil(len(dataset) / batch_size)
    if cfg.steps is not None:
        steps = cfg.steps
    elif cfg.epochs is not None:
        steps = cfg.epochs * per_epoch
    else:
        steps = max(hebb["epochs"] * per_epoch, hebb.get("min_steps", 0))
    resolved = {**asdict(cfg), "rule": rule, "epochs": math.ceil(steps / per_epoch),
                "steps": steps, "batch_size": batch_size, "lr": [float(v) for v in lr],
                "in_chans": in_chans, "img_size": img_size}
    return resolved, dataset


def _check_resume(out: Path, resolved: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint to resume from, or None for a fresh run; refuses to mix runs."""
    state_path = out / TRAIN_STATE
    if not resolved["resume"]:
        if state_path.exists() or (out / WEIGHTS).exists():
            raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or "
                                  f"choose another --out")
        return None
    if not state_path.exists():
        raise FileNotFoundError(f"nothing to resume in {out}: {TRAIN_STATE} is missing")
    # older runs: defaults for fields they predate; their budget was epochs, now also in steps
    saved = {**asdict(PretrainConfig()), "steps": resolved["steps"], **read_json(out / RUN_CONFIG)}
    changed = [k for k in _RUN_IDENTITY if saved.get(k) != resolved.get(k)]
    if changed:
        diff = ", ".join(f"{k}: {saved.get(k)!r} -> {resolved.get(k)!r}" for k in changed)
        raise ValueError(f"cannot resume {out} with different settings ({diff})")
    return torch.load(state_path, map_location="cpu", weights_only=True)


def _trim_log(path: Path, global_step: int) -> None:
    """Drop log lines past the checkpoint (and a half-written last line) before resuming."""
    if not path.exists():
        return
    rows = []
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break
            if row["step"] > global_step:
                break
            rows.append(row)
    write_jsonl(path, rows)


def pretrain(config: PretrainConfig | str, **overrides: Any) -> Path:
    """Train a backbone with Hebbian learning; returns the run dir.

    Args:
        config: a PretrainConfig, or the data source (folder or named dataset).
        overrides: PretrainConfig fields, e.g. ``model="hebb_fasthebb_6l", rule="hpca"``.
    Writes ``model.safetensors``, ``model.json``, ``config.json``, ``log.jsonl`` and the resume
    state ``state.pt`` into ``out``, each file atomically.
    """
    cfg = PretrainConfig(data=config, **overrides) if isinstance(config, str) else config
    if overrides and not isinstance(config, str):
        cfg = PretrainConfig(**{**asdict(cfg), **overrides})
    if not cfg.data:
        raise ValueError("no data given: pass DATA (an image folder or fashion-mnist) or set "
                         "data in --config")
    w, device = join(pick_device(cfg.device))  # under torchrun: one process of a parallel job
    with main_first():  # rank 0 packs the image cache once for every rank
        resolved, dataset = _resolve(cfg)
    resolved["world_size"] = w.size
    check_same_data(getattr(dataset, "items", []), str(cfg.data))
    valid = getattr(dataset, "valid", None)  # a packed folder knows its decodable files
    if valid is not None and not valid.any():
        raise ValueError(f"none of the {len(dataset)} image files under {dataset.root} could be "
                         f"decoded; nothing to train on")
    out = Path(cfg.out)
    state = on_main(lambda: _check_resume(out, resolved))
    if state is not None and state["finished"]:
        log.info("%s is already complete", out)
        return out
    if cfg.keep_freed_memory and device.type == "cpu":
        keep_freed_memory()
    model = _new_model(cfg, resolved, len(dataset.classes), device)
    layers = model.hebb_layers()
    optimizer = torch.optim.SGD([{"params": [layer.weight], "lr": lr}
                                 for layer, lr in zip(layers, resolved["lr"], strict=True)])
    skipped = SkippedFiles(dataset)
    if state is not None:
        pos, marks = _restore(state, model, optimizer, skipped, out, w, device)
    else:
        pos = {"phase": 0, "epoch": 0, "step": 0, "global_step": 0, "images": 0, "seconds": 0.0}
        marks = [directions(layer.weight.detach()) for layer in layers]  # at the last drift
        _fit_stem(model, dataset, resolved, device)
        if w.is_main:
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / RUN_CONFIG, resolved)
            write_jsonl(out / TRAIN_LOG, [])
    phases = ([list(range(len(layers)))] if cfg.mode == "consecutive"
              else [[i] for i in range(len(layers))])
    _train(model, optimizer, dataset, phases, resolved, pos, skipped, device, out, w, marks)
    if pos["images"] == 0:
        raise ValueError(f"none of the {len(dataset)} image files under {dataset.root} could be "
                         f"decoded; nothing was trained and no model was written to {out}")
    if w.is_main:
        _finish(cfg, resolved, model, dataset, out, pos, skipped, device)
        _save_state(out, model, optimizer, pos, skipped, marks, finished=True)
        del optimizer, marks
        release_freed_memory()
    barrier(long=True)  # the other ranks return once rank 0 has written the run dir
    return out


def _new_model(cfg: PretrainConfig, resolved: dict[str, Any], classes: int,
               device: torch.device) -> HebbNet:
    """The seeded backbone on ``device``, in training mode (rule none: BatchNorm calibrates
    on the pass with a cumulative average, exactly, instead of an EMA of its tail)."""
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, in_chans=resolved["in_chans"], img_size=resolved["img_size"],
                         rule=resolved["rule"], **cfg.model_kwargs)
    if classes:
        model.reset_classifier(classes)
    model.to(device, memory_format=memory_format(cfg.channels_last)).train()
    if resolved["rule"] == "none":
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = None
    return model


def _restore(state: dict[str, Any], model: HebbNet, optimizer: torch.optim.Optimizer,
             skipped: SkippedFiles, out: Path, w: Any, device: torch.device
             ) -> tuple[dict[str, Any], list[Tensor]]:
    """Load a checkpoint into ``model`` and ``optimizer``; returns (position, drift marks)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    marks = [m.to(device) for m in state.get("marks") or
             [directions(layer.weight.detach()) for layer in model.hebb_layers()]]
    pos = state["position"]
    skipped.rows = set(state["skipped_rows"])
    if w.is_main:
        _trim_log(out / TRAIN_LOG, pos["global_step"])
    log.info("resuming %s at phase %d epoch %d step %d", out, pos["phase"], pos["epoch"],
             pos["step"])
    return pos, marks


def _finish(cfg: PretrainConfig, resolved: dict[str, Any], model: HebbNet,
            dataset: ImageDataset, out: Path, pos: dict[str, Any], skipped: SkippedFiles,
            device: torch.device) -> None:
    """Rank 0 after training: convergence, the descriptor PCA, the run dir, warnings."""
    conv = convergence(training_log(out), model)
    if cfg.embeddings_out:  # whatever was there is not this run's embedding
        (Path(cfg.embeddings_out) / META).unlink(missing_ok=True)
    pca, sample = fit_descriptor_pca(model, dataset, cfg.descriptor_dims, cfg.seed, device,
                                     cfg.num_workers, cfg.quiet, cfg.flip)
    summary = {"images_seen": pos["images"], "steps": pos["global_step"],
               "train_seconds": round(pos["seconds"], 2), "skipped_files": skipped.paths,
               "wall_seconds": round(pos.get("wall_s", 0.0), 2),
               "steps_per_phase": resolved["steps"], "dataset": dataset.describe(),
               "convergence": conv, "descriptor_pca": pca,
               "compiled_step": pos.get("compile", NOT_COMPILED)}
    save_run(model.cpu(), out, training={"kind": "hebbian", **resolved, **summary})
    log.info("wrote %s (%d steps, %.1f s)", out, pos["global_step"], pos["seconds"])
    if cfg.embeddings_out and sample is not None and pca["dims"] and sample.covers(dataset):
        write_sample_embeddings(out, model, sample, dataset, cfg.data, cfg.split,
                                cfg.embeddings_out)
    elif cfg.embeddings_out:
        log.warning("no embeddings written to %s: the descriptor PCA's sample (%d of %d images) "
                    "is not their embedding; run `hebbret embed`", cfg.embeddings_out,
                    pca["images"], len(dataset))
    for la in conv["layers"]:
        if not la["converged"]:
            log.warning("Hebbian layer %d (%s) has not converged: it still moves at %s of its "
                        "peak speed (> %g); train longer (--steps)", la["layer"], la["rule"],
                        "unmeasured" if la["speed_ratio"] is None else f"{la['speed_ratio']:.0%}",
                        la["converged_below"])


def _fit_stem(model: HebbNet, dataset: ImageDataset, cfg: dict[str, Any],
              device: torch.device) -> None:
    """Fit a whitening stem on seeded-random training images, whole batches until at least
    WHITENING_IMAGES (the same ones in every process of a distributed job, so every rank fits
    the same filters)."""
    if not isinstance(model.stem, PatchWhitening):
        return
    shape = model.default_cfg["input_size"]

    def images() -> Iterator[torch.Tensor]:
        seen = 0
        for batch in make_loader(dataset, CALIBRATION_BATCH, cfg["seed"], device=device,
                                 num_workers=cfg["num_workers"]):
            if len(batch.images):
                yield batch.images.to(device).reshape(-1, *shape)
            seen += len(batch.images)
            if seen >= WHITENING_IMAGES:
                return

    patches = model.stem.fit(images())
    log.info("fitted the %d×%d whitening stem on %d patches", model.stem.patch, model.stem.patch,
             patches)


def _save_state(out: Path, model: HebbNet, optimizer: torch.optim.Optimizer,
                pos: dict[str, Any], skipped: SkippedFiles, marks: list[torch.Tensor],
                finished: bool = False) -> None:
    state = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
             "optimizer": optimizer.state_dict(), "position": dict(pos),
             "skipped_rows": sorted(skipped.rows), "finished": finished,
             "marks": [m.detach().cpu() for m in marks]}
    with atomic_path(out / TRAIN_STATE) as tmp:
        torch.save(state, tmp)


NOT_COMPILED = {"compiled": False, "compile_seconds": 0.0}  # the card of an eager run
MEASURE_EVERY = 20  # steps between convergence measurements (and at the end of every phase)
LOG_EVERY = 20  # steps between host synchronisations: log rows written, non-finite check


class _StepLog:
    """Per-step rows whose statistics stay on the device until :meth:`flush` (one host sync
    for all pending rows), which writes them to ``log.jsonl`` — or, if ``ok`` went False,
    writes the rows before the failing step and raises NonFiniteUpdate naming it."""

    def __init__(self, file: Any, device: torch.device, out: Path, images: int,
                 skipped: SkippedFiles) -> None:
        self.file, self.out, self.images, self.skipped = file, out, images, skipped
        self.distributed = dist.is_available() and dist.is_initialized()
        self.ok = torch.ones((), dtype=torch.bool, device=device)
        self.pending: list[tuple[dict[str, Any], torch.Tensor]] = []

    def add(self, row: dict[str, Any]) -> None:
        self.pending.append((row, self.ok.clone()))

    def flush(self) -> None:
        if not self.pending:
            return
        cells = [(s, k) for row, _ in self.pending for s in row["layers"]
                 for k, v in s.items() if isinstance(v, torch.Tensor)]
        if cells:
            values = torch.stack([s[k].float() for s, k in cells]).tolist()
            for (s, k), v in zip(cells, values, strict=True):
                s[k] = v
        oks = torch.stack([ok for _, ok in self.pending]).tolist()
        rows = [row for row, _ in self.pending]
        self.pending = []
        # images trained per step, over every rank; the undecodable files seen so far
        counts = ShardSum()([torch.tensor([float(r.pop("n")) for r in rows], dtype=torch.float64,
                                          device=self.ok.device)])
        self.skipped.rows = union_rows(self.skipped.rows)
        for row, n in zip(rows, counts.tolist(), strict=True):
            self.images += int(n)
            row["images"] = self.images
            if self.distributed:  # files another rank found undecodable count too
                row["skipped_files"] = self.skipped.count
        bad = oks.index(False) if False in oks else None
        for row in rows[:bad]:
            self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if bad is not None:
            row = rows[bad]
            raise NonFiniteUpdate(
                f"a Hebbian update or weight became non-finite at step {row['step']} (phase "
                f"{row['phase']}, epoch {row['epoch']}); stopped. {self.out / TRAIN_STATE} keeps the "
                f"last good checkpoint (if any); try a lower --lr")


def _train(model: HebbNet, optimizer: torch.optim.Optimizer, dataset: ImageDataset,
           phases: list[list[int]], cfg: dict[str, Any], pos: dict[str, Any],
           skipped: SkippedFiles, device: torch.device, out: Path, w: World,
           marks: list[torch.Tensor]) -> None:
    """Run every phase for ``cfg["steps"]`` steps (epochs repeat; the last one may stop part-way).

    No step waits for the device: statistics and the non-finite guard sync every LOG_EVERY
    steps and before every checkpoint (:class:`_StepLog`). Under torchrun (``w``) every rank
    reads its piece of each global batch and takes part in every step; rank 0 writes."""
    steps, batch_size = cfg["steps"], cfg["batch_size"]
    autocast = {"bfloat16": torch.bfloat16}.get(PRECISIONS[cfg["precision"]])  # None: fp32
    steps_per_epoch = math.ceil(len(dataset) / batch_size)
    total = len(phases) * steps * batch_size
    done = (pos["phase"] * steps + pos["epoch"] * steps_per_epoch + pos["step"]) * batch_size
    bar = progress(total=total, initial=min(done, total), unit="img", unit_scale=True,
                   quiet=cfg["quiet"] or not w.is_main, desc="hebbian")
    reduce, fmt = ShardSum() if w.size > 1 else None, memory_format(cfg["channels_last"])
    compiled = _compiled_step(cfg, device, len(phases) * steps, w)

    def checkpoint() -> None:
        _sync(steplog, pos)
        if w.is_main:
            _save_state(out, model, optimizer, pos, skipped, marks)

    with open(out / TRAIN_LOG if w.is_main else os.devnull, "a") as logf, bar:
        steplog = _StepLog(logf, device, out, pos["images"], skipped)
        while pos["phase"] < len(phases):
            active = phases[pos["phase"]]
            while pos["epoch"] * steps_per_epoch + pos["step"] < steps and not pos.get("spent"):
                loader = make_loader(dataset, batch_size, cfg["seed"],
                                     epoch=pos["phase"] * cfg["epochs"] + pos["epoch"],
                                     skip_batches=pos["step"], num_workers=cfg["num_workers"],
                                     device=device, shard=(w.rank, w.size))
                for batch in _within_budget(loader, cfg, pos, w):
                    skipped.add(batch.skipped)
                    t0 = time.perf_counter()
                    phase_step = pos["epoch"] * steps_per_epoch + pos["step"] + 1
                    measure = phase_step % MEASURE_EVERY == 0 or phase_step == steps
                    stats = _step_on(batch.images, model, optimizer, active, autocast,
                                     measure, steplog.ok, reduce, marks, fmt, compiled)
                    pos["seconds"] += time.perf_counter() - t0
                    pos["step"] += 1
                    pos["global_step"] += 1
                    steplog.add({"step": pos["global_step"], "phase": pos["phase"],
                                 "epoch": pos["epoch"], "n": len(batch.images),
                                 "skipped_files": skipped.count, "layers": stats})
                    bar.update((len(batch.images) + len(batch.skipped)) * w.size)
                    if phase_step == steps:
                        break
                    if pos["global_step"] % cfg["checkpoint_every"] == 0:
                        checkpoint()
                    elif pos["global_step"] % LOG_EVERY == 0:
                        _sync(steplog, pos)
                if (pos["step"] >= steps_per_epoch
                        or pos["epoch"] * steps_per_epoch + pos["step"] >= steps):
                    pos["epoch"] += 1
                    pos["step"] = 0
                checkpoint()
            pos["phase"], pos["epoch"] = pos["phase"] + 1, 0
    pos["compile"] = compiled.describe() if compiled is not None else dict(NOT_COMPILED)


def _compiled_step(cfg: dict[str, Any], device: torch.device, steps: int, w: World
                   ) -> CompiledStep | None:
    """The compiled step of this process for a run of ``steps`` steps when ``cfg["compile"]``
    (on | off | auto) wants one; None: eager. Under torchrun the reductions stay eager."""
    choice = cfg.get("compile", "off")
    if not compile_wanted(choice, device, steps):
        return None
    log.info("compiling the Hebbian step (%s); --compile off runs it eager", device.type)
    return CompiledStep(device)


def _within_budget(loader: Iterable[Any], cfg: dict[str, Any], pos: dict[str, Any], w: World
                   ) -> Iterator[Any]:
    """The loader's batches while ``cfg["budget_s"]`` (None: no budget) is not spent; adds the
    wall clock (data loading included) to ``pos["wall_s"]`` and sets ``pos["spent"]`` when it
    runs out. One process only: the ranks of a torchrun job would stop apart."""
    if cfg.get("budget_s") and w.size > 1:
        raise ValueError("budget_s is for one process: the ranks of a torchrun job would stop apart")
    tick = time.perf_counter()
    for batch in loader:
        yield batch
        now = time.perf_counter()
        pos["wall_s"], tick = pos.get("wall_s", 0.0) + now - tick, now
        if cfg.get("budget_s") and pos["wall_s"] >= cfg["budget_s"]:
            pos["spent"] = True  # a complete run, cut short at its wall clock
            return


def _sync(steplog: _StepLog, pos: dict[str, Any]) -> None:
    """Wait for the device: write the pending log lines (raising on a non-finite step) and
    count the wait in the training time and the images seen."""
    t0 = time.perf_counter()
    steplog.flush()
    pos["seconds"] += time.perf_counter() - t0
    pos["images"] = steplog.images


def _step_on(images: Tensor, model: HebbNet, optimizer: torch.optim.Optimizer, active: list[int],
             autocast: torch.dtype | None, measure: bool, ok: Tensor, reduce: ShardSum | None,
             marks: list[Tensor], fmt: torch.memory_format, compiled: CompiledStep | None = None
             ) -> list[dict[str, Any]]:
    """:func:`hebbian_step` on a loader batch (B, C, H, W) (none when this rank's piece is
    empty, unless ranks must all join), compiled or not; with ``measure``, each layer's drift
    since its mark."""
    if not len(images) and reduce is None:
        return []
    x = images.to(ok.device).reshape(-1, *model.default_cfg["input_size"]
                                     ).contiguous(memory_format=fmt)
    stats = hebbian_step(model, optimizer, x, active, autocast, measure, ok=ok, reduce=reduce,
                         compiled=compiled)
    if measure:
        for st in stats:
            st["drift"] = weight_drift(model.hebb_layers()[st["layer"]].weight, marks[st["layer"]])
    return stats


def directions(w: torch.Tensor) -> torch.Tensor:
    """Each neuron's weight vector at unit norm: (K, ...) -> (K, ...)."""
    return w / neuron_norms(w).clamp_min(1e-12).view(-1, *([1] * (w.dim() - 1)))


def weight_drift(w: torch.Tensor, mark: torch.Tensor) -> torch.Tensor:
    """How far a layer's neurons turned since ``mark`` (their unit directions at the last
    measurement, which then become the current ones): ‖Ŵ − Ŵ_mark‖_F / √K, about the RMS angle
    in radians; a device 0-d tensor, nothing waits. Directions only: the affine-free BatchNorm
    after every layer and the cosine of the embeddings make the neurons' norms invisible."""
    now = directions(w)
    drift = torch.linalg.vector_norm(now - mark) / w.shape[0] ** 0.5
    mark.copy_(now)
    return drift


RECENT_FRACTION = 0.2  # "recent" = the last fifth of a layer's measured steps
# Converged: every layer's recent speed is at most this fraction of its peak speed. Chosen by
# tools/bench_convergence.py on kNN of held-out *training* rows along 4 runs on 3 collections:
# the middle of the thresholds that never call a run converged while a later step still gains
# ≥ 1 point, and miss the fewest plateaus (0.65-0.75; docs/results.md "Convergence, measured").
CONVERGED_SPEED = 0.7


def drift_speeds(rows: list[dict[str, Any]]) -> dict[int, tuple[list[int], list[float]]]:
    """Per layer, (steps, speed): how fast its neurons turn per step between consecutive
    measurements (``drift`` / steps since the last one), from the training log ``rows``."""
    series: dict[int, tuple[list[int], list[float]]] = {}
    last: dict[int, int] = {}
    for row in rows:
        for s in row["layers"]:
            i = s["layer"]
            if i not in last:
                last[i] = row["step"] - 1  # the layer's phase starts here
            if "drift" in s:
                steps, speeds = series.setdefault(i, ([], []))
                steps.append(row["step"])
                speeds.append(s["drift"] / max(1, row["step"] - last[i]))
                last[i] = row["step"]
    return series


def convergence(rows: list[dict[str, Any]], model: HebbNet) -> dict[str, Any]:
    """Per Hebbian layer, from the training log ``rows``: ``speed_ratio``, how fast its neurons
    turned per step over the last fifth of its steps against the fastest they turned (peak of a
    3-measurement moving average), converged when ≤ CONVERGED_SPEED, whatever the rule or the
    initial radius; and the rule's own distance from its fixed point (:attr:`Rule.distance`), for
    reference."""
    distance: dict[int, float] = {}
    for row in rows:
        for s in row["layers"]:
            if "distance" in s:
                distance[s["layer"]] = s["distance"]
    speeds = drift_speeds(rows)
    layers = []
    for i, layer in enumerate(model.hebb_layers()):
        rule = layer.rule
        if rule.terms is None:
            continue
        ratio = None
        if i in speeds:
            v = np.asarray(speeds[i][1])
            recent = v[-max(1, round(RECENT_FRACTION * len(v))):].mean()
            peak = np.convolve(v, np.ones(3) / 3, mode="valid").max() if len(v) >= 3 else v.max()
            ratio = float(recent / peak) if peak > 0 else 0.0
        layers.append({"layer": i, "rule": rule.name, "speed_ratio": ratio,
                       "converged_below": CONVERGED_SPEED,
                       "converged": ratio is not None and ratio <= CONVERGED_SPEED,
                       "distance": distance.get(i), "distance_measure": rule.distance_measure})
    return {"layers": layers, "converged": all(la["converged"] for la in layers),
            "measure": "recent turning speed of the neurons / its peak",
            "measured_every_steps": MEASURE_EVERY}


def training_log(run: str | Path) -> list[dict[str, Any]]:
    """The per-step rows of a run's ``log.jsonl``."""
    return read_jsonl(Path(run) / TRAIN_LOG)
