"""Past one process: data-parallel Hebbian steps and sharded work under ``torchrun``.

Hebbian learning has no autograd, so DDP does not apply. A global batch of B images is split
into contiguous shards, one per rank (sizes differ by at most one; an image is never repeated).
Every quantity a step needs from the whole batch is a sum over its rows (docs/design.md §9):

- each training-mode BatchNorm: Σx and the count, then Σ(x − mean)² (SyncBatchNorm's
  semantics, on CPU too): two ``all_reduce`` per BatchNorm layer;
- each plastic layer's update: the numerator Yᵀ X − M W and the rule's den
  (:meth:`hebbret.hebb.layers.HebbConv2d.delta_parts`) — for every layer of the step in one
  ``all_reduce`` after the forward pass. swta's colsum(Z), which scales Gc before Yᵀ X, is such a
  den; SoftHebb's max|ΔW| normalisation is applied after the sum.

:class:`ShardSum` does the summing: over the shards this process holds (in order), then over the
processes. The same code with several shards in one process is the reference the 2-process run
is tested against bit for bit.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .hebb.layers import HebbConv2d, HebbLinear
from .hebb.rules import divide

log = logging.getLogger(__name__)

TIMEOUT_S = float(os.environ.get("HEBBRET_DIST_TIMEOUT", "600"))  # a collective waits this long


@dataclass(frozen=True)
class World:
    """This process's place in the job: rank, number of processes, rank on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """The job this process is in (torchrun's RANK / WORLD_SIZE / LOCAL_RANK; 1 process without)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(),
                     int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    size = int(os.environ.get("WORLD_SIZE", 1))
    if size <= 1:
        return World()
    return World(int(os.environ.get("RANK", 0)), size, int(os.environ.get("LOCAL_RANK", 0)))


_waits: Any = None  # a gloo group for waits that may outlast the collective timeout


def join(device: torch.device) -> tuple[World, torch.device]:
    """Join the torchrun job when there is one (WORLD_SIZE > 1): NCCL for CUDA, gloo for CPU
    (and for the CPU-side counts), collectives that fail after ``HEBBRET_DIST_TIMEOUT`` seconds
    (default 600) instead of hanging when a rank died. Each process drives the GPU of its local
    rank. Returns this process's :class:`World` and its device."""
    global _waits
    w = world()
    if w.size > 1 and device.type == "cuda":
        if device.index is not None:
            raise ValueError(f"--device {device} under torchrun with {w.size} processes: give "
                             f"--device cuda (or auto); each process takes the GPU of its local "
                             f"rank")
        torch.cuda.set_device(w.local_rank)
        device = torch.device("cuda", w.local_rank)
    if w.size > 1 and not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=TIMEOUT_S), **kwargs)
        # waits for rank 0's long work (packing a cache, merging shards) must not time out
        _waits = dist.new_group(backend="gloo", timeout=datetime.timedelta(days=1))
        w = world()
        log.info("rank %d of %d (%s)", w.rank, w.size, backend)
    return w, device


class ShardSum:
    """Sum per-shard partial sums: the shards this process holds, in order, then (under
    torchrun) over every process with ``all_reduce``."""

    def __call__(self, parts: Sequence[Tensor]) -> Tensor:
        total = parts[0].clone()
        for p in parts[1:]:
            total += p
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(total)
        return total


def global_batch_norm(bn: _BatchNorm, shards: list[Tensor], reduce: ShardSum) -> list[Tensor]:
    """Training-mode BatchNorm over the union of ``shards`` (the global batch): the statistics
    of all of them, running statistics updated as ``bn`` would on the whole batch."""
    dims = [0, *range(2, shards[0].dim())]
    shape = (1, -1) + (1,) * (shards[0].dim() - 2)
    xs = [x.float() for x in shards]
    first = reduce([torch.cat([x.sum(dims), x.new_full((1,), x.numel() / bn.num_features)])
                    for x in xs])
    n = first[-1]
    mean = first[:-1] / n.clamp_min(1)
    var = reduce([((x - mean.view(shape)) ** 2).sum(dims) for x in xs]) / n.clamp_min(1)
    if bn.track_running_stats and bn.running_mean is not None:
        seen = (n > 0).to(bn.num_batches_tracked.dtype)  # an all-empty batch changes nothing
        bn.num_batches_tracked.add_(seen)
        f = (1.0 / bn.num_batches_tracked.clamp_min(1) if bn.momentum is None
             else torch.full((), bn.momentum, device=n.device)) * seen
        bn.running_mean.mul_(1 - f).add_(f * mean)
        bn.running_var.mul_(1 - f).add_(f * var * n / (n - 1).clamp_min(1))
    inv = torch.rsqrt(var + bn.eps).view(shape)
    outs = []
    for x, xf in zip(shards, xs, strict=True):
        y = (xf - mean.view(shape)) * inv
        if bn.affine:
            y = y * bn.weight.view(shape) + bn.bias.view(shape)
        outs.append(y.to(x.dtype))
    return outs


@torch.no_grad()
def sharded_forward(model: nn.Module, shards: list[Tensor], reduce: ShardSum,
                    upto: int | None = None) -> list[Tensor]:
    """``model.forward_blocks`` over the global batch made of ``shards`` (this process's
    pieces of it), setting every plastic Hebbian layer's ``delta`` to the whole batch's ΔW.
    Returns the output of each shard."""
    plastic: list[tuple[HebbConv2d | HebbLinear, list[tuple[Tensor, Tensor | None]]]] = []
    shards = [model.stem(x) for x in shards]
    for i, block in enumerate(model.blocks):
        for module in (block if isinstance(block, nn.Sequential) else [block]):
            if isinstance(module, _BatchNorm) and module.training:
                shards = global_batch_norm(module, shards, reduce)
            elif isinstance(module, (HebbConv2d, HebbLinear)):
                outs, parts = [], []
                for x in shards:
                    xp = module.pad(x)
                    u = module.preact(xp)
                    if module.plastic:
                        parts.append(module.delta_parts(xp, u))
                    outs.append(module.respond(u))
                if module.plastic:
                    plastic.append((module, parts))
                shards = outs
            else:
                shards = [module(x) for x in shards]
        if upto is not None and i >= upto:
            break
    if plastic:  # one reduction for every layer's numerator and den
        flats = [torch.cat([t.float().flatten() for _, parts in plastic for t in parts[s]
                            if t is not None]) for s in range(len(shards))]
        total = reduce(flats)
        offset = 0
        for module, parts in plastic:
            num, den = parts[0]
            size = num.numel()
            num = total[offset: offset + size].view_as(num).to(num.dtype)
            offset += size
            if den is not None:
                den, offset = total[offset: offset + den.numel()].view_as(den), offset + den.numel()
            module.delta = divide(num, den)
    return shards


def listing_digest(items: Sequence[Any]) -> str:
    """sha256 of a dataset's listing (paths and labels, in order)."""
    h = hashlib.sha256()
    for it in items:
        h.update(f"{it.path}\0{it.label}\n".encode())
    return h.hexdigest()


def check_same_data(items: Sequence[Any], source: str) -> None:
    """Every rank must read the same listing of ``source``; else a ValueError on every rank
    naming which ranks see what (different folders, a file added on one node, ...)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    mine = (len(items), listing_digest(items), items[0].path if items else None)
    seen: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(seen, mine)
    if len(set(seen)) > 1:
        detail = "; ".join(f"rank {r}: {n} files, listing {d[:12]}, first {p}"
                           for r, (n, d, p) in enumerate(seen))
        raise ValueError(f"the ranks of this torchrun job see different data at {source} "
                         f"({detail}); give every rank the same folder")


def union_rows(rows: set[int]) -> set[int]:
    """The union over every rank of a set of row numbers (e.g. undecodable files)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return set(rows)
    seen: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(seen, sorted(rows))
    return {r for part in seen for r in part}


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (the object itself without torchrun)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. packs the image cache), the other ranks after it
    (they wait as long as it takes)."""
    w = world()
    if not w.is_main:
        barrier(long=True)
    yield
    if w.is_main:
        barrier(long=True)


def barrier(long: bool = False) -> None:
    """Wait for every rank; ``long``: without the collective timeout (rank 0 may be busy)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier(group=_waits if long else None)


def on_main(fn: Any) -> Any:
    """``fn()`` run on rank 0 only; its result — or the ValueError/OSError it raised — on every
    rank (so a bad argument stops every rank with the same message instead of a hang)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return fn()
    result: Any = None
    error: BaseException | None = None
    if dist.get_rank() == 0:
        try:
            result = ("ok", fn())
        except (ValueError, OSError) as e:
            result, error = ("error", e), e
        except Exception as e:  # noqa: BLE001 - every rank must learn that rank 0 failed
            result, error = ("error", RuntimeError(f"rank 0 failed: {type(e).__name__}: {e}")), e
    kind, value = broadcast(result)
    if error is not None:
        raise error
    if kind == "error":
        raise value
    return value
