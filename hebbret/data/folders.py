"""Image folders: scanning (labeled by class sub-folders or not), decoding, the dataset.

Every dataset yields ``(image, label, index)`` with ``image`` float32 (C, H, W) normalised, or
``None`` when the file cannot be decoded; :func:`~hebbret.data.sampling.collate` drops those and
:class:`SkippedFiles` warns once per bad file and counts them.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


def natural_key(text: str) -> list:
    """Sort key that orders 'img2' before 'img10'."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


@dataclass(frozen=True)
class Item:
    """One row of a dataset: where it comes from and its label (-1 when unlabeled)."""

    path: str  # relative to the dataset root, '/'-separated
    label: int = -1
    class_name: str = ""


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def scan_image_folder(root: str | os.PathLike, labeled: bool | None = None
                      ) -> tuple[list[Item], list[str]]:
    """List the images under ``root`` in natural order.

    Labeled when every image sits inside a sub-folder of ``root`` (the sub-folder names are the
    classes, images at any depth below them); otherwise every image gets label -1.
    ``labeled=None`` decides by that layout, True requires it, False ignores the folders.

    Returns:
        items, classes (empty when unlabeled).
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"expected a folder of images, got a file: {root}")
    paths = []
    inside = os.path.realpath(root)
    seen: set[str] = set()  # real paths of the folders walked: each is scanned once
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            log.warning("skipping %s: a link to a folder already scanned (%s)", dirpath, real)
            dirnames[:] = []
            continue
        seen.add(real)
        kept = []
        for d in dirnames:
            target = os.path.realpath(os.path.join(dirpath, d))
            if d.startswith("."):
                continue
            if os.path.islink(os.path.join(dirpath, d)) and (
                    target == inside or target.startswith(inside + os.sep)):
                log.warning("skipping %s: a link to %s, which is inside %s already",
                            os.path.join(dirpath, d), target, root)
                continue
            kept.append(d)
        dirnames[:] = kept
        rel = Path(dirpath).relative_to(root)
        paths += [(rel / f).as_posix() for f in filenames if _is_image(f)]
    if not paths:
        raise ValueError(f"found 0 images under {root}; supported extensions: "
                         f"{', '.join(IMAGE_EXTENSIONS)} (any letter case)")
    paths.sort(key=natural_key)
    in_subfolders = all("/" in p for p in paths)
    if labeled and not in_subfolders:
        loose = next(p for p in paths if "/" not in p)
        raise ValueError(f"{root} is not a labeled folder: {loose!r} is not inside a class "
                         f"sub-folder (expected ROOT/<class>/<image>)")
    if labeled is False or not in_subfolders:
        return [Item(p) for p in paths], []
    classes = sorted({p.split("/", 1)[0] for p in paths}, key=natural_key)
    index = {c: i for i, c in enumerate(classes)}
    items = [Item(p, index[p.split("/", 1)[0]], p.split("/", 1)[0]) for p in paths]
    return items, classes


def load_image(path: str | os.PathLike, in_chans: int, img_size: tuple[int, int] | None
               ) -> np.ndarray:
    """Decode one image file -> uint8 (H, W, C), EXIF-rotated, resized and centre-cropped.

    Raises OSError / ValueError for files that are not decodable images.
    """
    if in_chans not in (1, 3):
        raise ValueError(f"images can be loaded with 1 or 3 channels, not {in_chans}")
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        img = img.convert("L" if in_chans == 1 else "RGB")
        if img_size is not None and img.size != (img_size[1], img_size[0]):
            img = ImageOps.fit(img, (img_size[1], img_size[0]), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def to_tensor(arr: np.ndarray, mean: Sequence[float] | torch.Tensor,
              std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """uint8 (H, W, C) -> normalised float32 (C, H, W): (x / 255 - mean) / std per channel."""
    x = torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).float().div_(255)
    return (x - torch.as_tensor(mean).view(-1, 1, 1)) / torch.as_tensor(std).view(-1, 1, 1)


class ImageDataset(Dataset):
    """Base for hebbret datasets: ``items``, ``classes``, ``root`` and normalisation."""

    items: list[Item]
    classes: list[str]
    root: str
    batchable = False  # True: ``uint8_rows(rows)`` gives the stored pixels, batched by indexing

    def __init__(self, in_chans: int, img_size: tuple[int, int] | None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        self.in_chans, self.img_size = in_chans, img_size
        self.mean = torch.tensor(mean if mean is not None else [0.0] * in_chans).view(-1, 1, 1)
        self.std = torch.tensor(std if std is not None else [1.0] * in_chans).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.items)

    def _to_tensor(self, arr: np.ndarray) -> torch.Tensor:
        return to_tensor(arr, self.mean, self.std)

    @property
    def labels(self) -> np.ndarray:
        return np.array([it.label for it in self.items], dtype=np.int64)

    def describe(self) -> dict:
        return {"root": self.root, "count": len(self), "classes": self.classes,
                "in_chans": self.in_chans, "img_size": list(self.img_size or [])}


class ImageFolder(ImageDataset):
    """Images under a folder (see :func:`scan_image_folder`); unreadable files yield ``None``."""

    def __init__(self, root: str | os.PathLike, in_chans: int = 3,
                 img_size: int | tuple[int, int] | None = 32, labeled: bool | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        if isinstance(img_size, int):
            img_size = (img_size, img_size)
        super().__init__(in_chans, img_size, mean, std)
        self.root = str(Path(root).resolve())
        self.items, self.classes = scan_image_folder(root, labeled)

    def raw(self, i: int) -> np.ndarray:
        """The decoded image as stored in the model's channels: uint8 (H, W, C)."""
        return load_image(os.path.join(self.root, self.items[i].path), self.in_chans, None)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, int]:
        item = self.items[i]
        try:
            arr = load_image(os.path.join(self.root, item.path), self.in_chans, self.img_size)
        except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError,
                SyntaxError):
            return None, item.label, i
        return self._to_tensor(arr), item.label, i




class SkippedFiles:
    """Warns once per undecodable file, whatever the epoch or worker, and counts them."""

    def __init__(self, dataset: ImageDataset) -> None:
        self.dataset = dataset
        self.rows: set[int] = set()

    def add(self, rows: list[int]) -> None:
        for r in rows:
            if r not in self.rows:
                self.rows.add(r)
                path = os.path.join(self.dataset.root, self.dataset.items[r].path)
                log.warning("skipping %s: not a decodable image", path)

    @property
    def count(self) -> int:
        return len(self.rows)

    @property
    def paths(self) -> list[str]:
        return sorted((self.dataset.items[r].path for r in self.rows), key=natural_key)
