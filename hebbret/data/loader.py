"""Opening a source as a dataset and batching it: the one module that sees folders, named
datasets, the packed cache and the samplers.

:class:`PackedLoader` yields the same :class:`~hebbret.data.sampling.Batch` es, in the same
order, as :func:`make_loader` over a DataLoader, for any dataset with ``uint8_rows``: the uint8
array is gathered by rows and normalised per batch, either from an array resident on the target
device (uploaded once) or streamed from host memory by a background thread that pins and copies
the next batch while the current one trains.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..config import NAMED_DATASETS
from .folders import ImageDataset, ImageFolder
from .named import FashionMNIST
from .packed import cache_enabled, open_packed
from .sampling import Batch, EpochBatches, EpochSampler, collate
from .survey import native_format

DEVICE_FRACTION = 0.5  # the resident array may take this share of the device's free memory


def open_dataset(source: str | os.PathLike, split: str = "train", in_chans: int | None = None,
                 img_size: int | tuple[int, int] | None = None, data_root: str | None = None,
                 labeled: bool | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, cache: bool | None = None) -> ImageDataset:
    """A named dataset (``fashion-mnist``) or an image folder path.

    A folder is read through its packed cache (:mod:`hebbret.data.packed`; built on first use) unless
    ``cache`` is False (None: on unless ``HEBBRET_CACHE=0``).
    """
    native_chans, _ = native_format(source)
    in_chans = in_chans or native_chans
    if str(source) in ("fashion-mnist", "fashion-mnist-mini"):
        return FashionMNIST(data_root, split, in_chans, img_size, mean, std,
                            mini=str(source) == "fashion-mnist-mini")
    if not Path(source).exists():
        raise FileNotFoundError(f"data not found: {source} is neither an existing folder nor a "
                                f"named dataset ({', '.join(NAMED_DATASETS)})")
    if img_size is None:
        raise ValueError(f"images in {source} need a size to be batched; pass img_size")
    folder = ImageFolder(source, in_chans, img_size, labeled, mean, std)
    if cache_enabled() if cache is None else cache:
        return open_packed(folder)
    return folder



def make_loader(dataset: ImageDataset, batch_size: int, seed: int | None = None, epoch: int = 0,
                skip_batches: int = 0, num_workers: int = 0, drop_last: bool = False,
                rows: Sequence[int] | None = None, device: torch.device | str = "cpu",
                shard: tuple[int, int] = (0, 1)) -> Iterable[Batch]:
    """Batches of :class:`Batch` over ``rows`` (default all); shuffled by (seed, epoch) unless
    seed is None. A ``batchable`` dataset (packed cache, native Fashion-MNIST) is batched by
    indexing its uint8 array, normalised on ``device`` (:class:`PackedLoader`);
    others are decoded by a DataLoader (``num_workers`` processes) and stay on the CPU.
    ``shard`` = (rank, ranks): only this rank's piece of every global batch is read."""
    rows = range(len(dataset)) if rows is None else rows
    sampler = EpochSampler(rows, seed, epoch, skip_batches * batch_size, shard)
    if dataset.batchable:
        return PackedLoader(dataset, batch_size, sampler, device, drop_last)
    return DataLoader(dataset, batch_sampler=EpochBatches(sampler, batch_size, drop_last),
                      num_workers=num_workers, collate_fn=collate, persistent_workers=False)



def fits_device(nbytes: int, device: torch.device, fraction: float = DEVICE_FRACTION) -> bool:
    """Whether an array of ``nbytes`` may live on ``device``: CUDA within ``fraction`` of its
    free memory; the CPU always (the host array is already there)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= fraction * free


class PackedLoader:
    """Batches of a dataset with ``uint8_rows`` in :class:`EpochSampler` order, normalised on
    ``device``: from a resident copy of the whole uint8 array, or streamed (prefetched by a
    thread, pinned and copied without blocking on CUDA)."""

    def __init__(self, dataset: ImageDataset, batch_size: int, sampler: EpochSampler,
                 device: torch.device | str = "cpu", drop_last: bool = False,
                 resident: bool | None = None) -> None:
        self.dataset, self.batch_size, self.sampler = dataset, batch_size, sampler
        self.device, self.drop_last = torch.device(device), drop_last
        n = len(dataset)
        nbytes = n * int(np.prod(dataset.uint8_rows(np.array([0])).shape))
        self.resident = fits_device(nbytes, self.device) if resident is None else resident
        self.mean = dataset.mean.view(1, -1, 1, 1).to(self.device)
        self.std = dataset.std.view(1, -1, 1, 1).to(self.device)
        self.valid = torch.from_numpy(np.asarray(getattr(dataset, "valid", np.ones(n, bool))))
        self.labels = torch.from_numpy(dataset.labels)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _array(self) -> torch.Tensor:
        """The dataset's whole uint8 array on the device, uploaded once per dataset object
        (kept on it, so it lives exactly as long as the dataset)."""
        held = getattr(self.dataset, "_resident", None)
        if held is None or held.device != self.device:
            host = torch.from_numpy(np.ascontiguousarray(
                self.dataset.uint8_rows(np.arange(len(self.dataset)))))
            held = self.dataset._resident = host.to(self.device)
        return held

    def _batches(self) -> Iterator[np.ndarray]:
        for rows in self.sampler.batches(self.batch_size, self.drop_last):
            yield np.asarray(rows, dtype=np.int64)

    def _finish(self, pixels: torch.Tensor, rows: torch.Tensor, skipped: list[int]) -> Batch:
        """uint8 (B, H, W, C) on the device -> normalised float32 (B, C, H, W)."""
        x = pixels.permute(0, 3, 1, 2).float().div_(255)
        return Batch(((x - self.mean) / self.std).contiguous(), self.labels[rows], rows, skipped)

    def _split(self, rows: np.ndarray) -> tuple[np.ndarray, list[int]]:
        ok = self.valid[torch.from_numpy(rows)].numpy()
        return rows[ok], rows[~ok].tolist()

    def __iter__(self) -> Iterator[Batch]:
        if self.resident:
            array = self._array()
            for rows in self._batches():
                good, skipped = self._split(rows)
                idx = torch.from_numpy(good)
                yield self._finish(array[idx.to(self.device)], idx, skipped)
            return
        yield from self._streamed()

    def _streamed(self) -> Iterator[Batch]:
        pin = self.device.type == "cuda"
        ready: queue.Queue = queue.Queue(maxsize=2)
        stop = threading.Event()

        def produce() -> None:
            try:
                for rows in self._batches():
                    if stop.is_set():
                        return
                    good, skipped = self._split(rows)
                    host = torch.from_numpy(self.dataset.uint8_rows(good))
                    if pin:
                        host = host.pin_memory()
                    ready.put((host, torch.from_numpy(good), skipped))
                ready.put(None)
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
                ready.put(e)

        thread = threading.Thread(target=produce, daemon=True)
        thread.start()
        try:
            while (item := ready.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                host, idx, skipped = item
                yield self._finish(host.to(self.device, non_blocking=pin), idx, skipped)
        finally:
            stop.set()
            while thread.is_alive():  # unblock a producer waiting on a full queue
                try:
                    ready.get_nowait()
                except queue.Empty:
                    thread.join(0.01)
