"""Named datasets: Fashion-MNIST from the Debian package's IDX files, and its bundled mini set."""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .folders import ImageDataset, Item

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
MINI_FILE = Path(__file__).parent.parent / "datasets" / "fashion_mnist_mini.npz"


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {arr.size} bytes")
    return arr.reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).exists():
            return root / name
    raise FileNotFoundError(f"{stem}(.gz) not found in {root}; install the Debian package "
                            f"dataset-fashion-mnist or pass --data-root with the idx files")


class FashionMNIST(ImageDataset):
    """Fashion-MNIST (Zalando, MIT licence) from its original idx files; 1×28×28 by default.

    ``mini=True`` reads the class-balanced subset shipped inside hebbret instead
    (500 train + 100 test images per class, made by tools/make_fashion_mnist_mini.py).
    """

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train",
                 in_chans: int = 1, img_size: int | tuple[int, int] | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 mini: bool = False) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"fashion-mnist split must be 'train' or 'test', got {split!r}")
        if isinstance(img_size, int):
            img_size = (img_size, img_size)
        super().__init__(in_chans, img_size, mean, std)
        if mini:
            with np.load(MINI_FILE) as arrays:
                self.images = arrays[f"{split}_images"]
                labels = arrays[f"{split}_labels"]
            self.root = str(MINI_FILE)
        else:
            root = Path(root) if root is not None else FASHION_MNIST_ROOT
            if not root.is_dir():
                raise FileNotFoundError(f"fashion-mnist folder not found: {root}; install the "
                                        f"Debian package dataset-fashion-mnist or pass --data-root")
            prefix = "train" if split == "train" else "t10k"
            self.images = _read_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte"))  # (N, 28, 28)
            labels = _read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte"))
            self.root = str(root.resolve())
        self.classes = list(FASHION_MNIST_CLASSES)
        self.items = [Item(f"{split}/{i:05d}", int(c), FASHION_MNIST_CLASSES[c])
                      for i, c in enumerate(labels)]
        self.batchable = self.in_chans == 1 and self.img_size in (None, self.images.shape[1:])

    def uint8_rows(self, rows: np.ndarray) -> np.ndarray:
        """The stored images of ``rows``: uint8 (len(rows), 28, 28, 1) (native size only)."""
        return self.images[np.asarray(rows, dtype=np.int64)][..., None]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        arr = self.images[i]
        if self.in_chans != 1 or (self.img_size and self.img_size != arr.shape):
            img = Image.fromarray(arr).convert("L" if self.in_chans == 1 else "RGB")
            if self.img_size:
                img = img.resize((self.img_size[1], self.img_size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(img)
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        return self._to_tensor(arr), self.items[i].label, i

    def raw(self, i: int) -> np.ndarray:
        """The stored image: uint8 (28, 28, 1)."""
        return self.images[i][:, :, None]
