"""Which rows, in which order: epoch permutations, per-rank shards of a batch, batches with the
rows that could not be decoded, held-out and few-label row choices."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Sampler

log = logging.getLogger(__name__)


def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """[start, end) of rank ``rank``'s contiguous share of ``n`` rows (sizes differ by ≤ 1)."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


@dataclass
class Batch:
    images: torch.Tensor  # float32 (B, C, H, W)
    labels: torch.Tensor  # int64 (B,)
    indices: torch.Tensor  # int64 (B,): dataset rows
    skipped: list[int]  # dataset rows whose files could not be decoded


def collate(samples: list[tuple[torch.Tensor | None, int, int]]) -> Batch:
    good = [s for s in samples if s[0] is not None]
    skipped = [s[2] for s in samples if s[0] is None]
    if not good:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long),
                     torch.empty(0, dtype=torch.long), skipped)
    return Batch(torch.stack([s[0] for s in good]), torch.tensor([s[1] for s in good]),
                 torch.tensor([s[2] for s in good]), skipped)



class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch (or plain order) of ``rows`` (default: all), starting
    part-way for resumed runs. ``shard`` = (rank, ranks): :meth:`batches` yields only this
    rank's contiguous piece of every global batch (docs/design.md §9)."""

    def __init__(self, rows: Sequence[int], seed: int | None, epoch: int = 0, start: int = 0,
                 shard: tuple[int, int] = (0, 1)) -> None:
        self.rows, self.seed, self.epoch, self.start = list(rows), seed, epoch, start
        self.shard = shard

    def order(self) -> list[int]:
        if self.seed is None:
            return self.rows
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return [self.rows[i] for i in torch.randperm(len(self.rows), generator=g).tolist()]

    def __iter__(self):
        return iter(self.order()[self.start:])

    def __len__(self) -> int:
        return len(self.rows) - self.start

    def batches(self, batch_size: int, drop_last: bool = False) -> Iterator[list[int]]:
        """The rows of every global batch of ``batch_size``; with a shard, this rank's piece."""
        order = self.order()[self.start:]
        for i in range(0, len(order), batch_size):
            rows = order[i: i + batch_size]
            if drop_last and len(rows) < batch_size:
                return
            a, b = shard_bounds(len(rows), *self.shard)
            yield rows[a:b]


class EpochBatches(Sampler[list[int]]):
    """:meth:`EpochSampler.batches` as a DataLoader batch sampler."""

    def __init__(self, sampler: EpochSampler, batch_size: int, drop_last: bool) -> None:
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last

    def __iter__(self):
        return self.sampler.batches(self.batch_size, self.drop_last)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)



def held_out(labels: Sequence[int], fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """A seeded boolean mask of ``round(fraction · n_c)`` rows of every class c, at least one and
    never all (a class of one item stays wholly out of the mask): the test rows of a split
    folder, the held-out rows of a training split to choose settings on (never test images)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        mask[rng.permutation(rows)[: min(max(1, round(fraction * len(rows))), len(rows) - 1)]] = True
    return mask


def few_label_rows(labels: Sequence[int], per_class: int | None = None,
                   fraction: float | None = None, seed: int = 0) -> np.ndarray:
    """A class-balanced, seeded choice of labeled rows: ``per_class`` items of every class, or
    ``fraction`` of the whole set split evenly over the classes. Returns sorted row numbers.

    A class with fewer items than asked gives all it has, with a warning.
    """
    if (per_class is None) == (fraction is None):
        raise ValueError("give exactly one of labels_per_class and label_fraction")
    labels = np.asarray(labels)
    classes = np.unique(labels[labels >= 0])
    if len(classes) == 0:
        raise ValueError("few-label selection needs labeled data (class sub-folders)")
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ValueError(f"label_fraction must be in (0, 1], got {fraction}")
        per_class = max(1, round(fraction * int((labels >= 0).sum()) / len(classes)))
    if per_class < 1:
        raise ValueError(f"labels_per_class must be at least 1, got {per_class}")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in classes:
        rows = np.flatnonzero(labels == c)
        if len(rows) < per_class:
            log.warning("class %s has %d items, fewer than the %d asked for; taking all", c,
                        len(rows), per_class)
        chosen.append(rng.permutation(rows)[:per_class])
    return np.sort(np.concatenate(chosen))



def stratified_folds(labels: Sequence[int], folds: int, seed: int) -> list[np.ndarray]:
    """Positions 0..len(labels)-1 split into ``folds`` parts, each class dealt out evenly over
    them in a seeded order (sorted positions per part; empty parts dropped)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(folds)]
    for c in np.unique(labels):
        for j, pos in enumerate(rng.permutation(np.flatnonzero(labels == c))):
            parts[j % folds].append(int(pos))
    return [np.array(sorted(p)) for p in parts if p]
