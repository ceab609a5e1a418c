"""Image data: folder scanning (labeled or not), named datasets, decoding and batching.

Every dataset yields ``(image, label, index)`` with ``image`` float32 (C, H, W) normalised, or
``None`` when the file cannot be decoded; :func:`collate` drops those and reports them, and
:class:`SkippedFiles` warns once per bad file and counts them.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
NAMED_DATASETS = ("fashion-mnist", "fashion-mnist-mini")
MINI_FILE = Path(__file__).parent / "datasets" / "fashion_mnist_mini.npz"


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


GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
NATIVE_SIZE_MAX = 64  # a folder of square images up to this side trains at their own size
DETAIL_SIDES = (32, 64, 96, 128, 160)  # sides at which a survey measures what images lose
DETAIL_SAMPLE = 16  # images a survey decodes for that
DETAIL_TOP = 256  # ... each looked at with its short side at most this


@dataclass(frozen=True)
class Survey:
    """What a sample of a source's images says about it."""

    in_chans: int  # 1 when every sampled image is grayscale, else 3
    sizes: tuple[tuple[int, int], ...]  # (H, W) of every decodable sampled header
    sampled: int  # headers read
    lost: tuple[tuple[int, float], ...] = ()  # (side, median share of variance lost there)

    @property
    def short_side(self) -> int | None:
        """The median of the sampled images' shorter sides (None: nothing decodable)."""
        return int(np.median([min(s) for s in self.sizes])) if self.sizes else None

    @property
    def native_size(self) -> tuple[int, int] | None:
        """The images' own size when all sampled are the same square of side ≤ 64: thumbnails
        train at their own size."""
        if len(set(self.sizes)) == 1 and self.sizes[0][0] == self.sizes[0][1] <= NATIVE_SIZE_MAX:
            return self.sizes[0]
        return None

    def lost_at(self, side: int) -> float | None:
        """The median share of an image's variance lost when it is shrunk to side×side (None:
        not measured)."""
        return dict(self.lost).get(side)


def detail_lost(img: Image.Image, sides: Sequence[int] = DETAIL_SIDES) -> dict[int, float]:
    """{side: share of the image's variance lost at side×side}: the centre square of its
    grayscale (short side ≤ DETAIL_TOP) shrunk to side (box filter), enlarged back (bilinear),
    ‖x − x̂‖² / (pixels · var x). Sides ≥ the image's own lose nothing (0). Images enlarged from
    a small original lose almost nothing at that original's side."""
    gray = ImageOps.fit(img.convert("L"), (min(img.size),) * 2, Image.Resampling.BOX)
    top = min(gray.size[0], DETAIL_TOP)
    x = np.asarray(gray.resize((top, top), Image.Resampling.BOX), dtype=np.float32)
    var = max(float(x.var()), 1e-6)
    lost = {}
    for side in sides:
        if side >= top:
            lost[side] = 0.0
            continue
        small = Image.fromarray(x).resize((side, side), Image.Resampling.BOX)
        back = np.asarray(small.resize((top, top), Image.Resampling.BILINEAR), dtype=np.float32)
        lost[side] = float(((x - back) ** 2).mean() / var)
    return lost


def survey(source: str | os.PathLike, sample: int = 64) -> Survey:
    """Channels and sizes of a source: fashion-mnist is 1×28×28; a folder is judged by up to
    ``sample`` image headers spread over it, and DETAIL_SAMPLE of those images decoded to
    measure how much of them is lost at each of DETAIL_SIDES (:func:`detail_lost`)."""
    if str(source).startswith("fashion-mnist"):
        return Survey(1, ((28, 28),), 1)
    try:
        items, _ = scan_image_folder(source)
    except (OSError, ValueError):
        return Survey(3, (), 0)
    root = Path(source)
    modes, sizes, losses = set(), [], []
    picked = items[:: max(1, len(items) // sample)][:sample]
    for i, it in enumerate(picked):
        try:
            with Image.open(root / it.path) as img:
                modes.add(img.mode)
                sizes.append((img.size[1], img.size[0]))
                if i % max(1, len(picked) // DETAIL_SAMPLE) == 0:
                    img.draft("L", (DETAIL_TOP, DETAIL_TOP))  # JPEG: decode at a fraction
                    losses.append(detail_lost(ImageOps.exif_transpose(img)))
        except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError,
                SyntaxError):
            continue
    chans = 1 if modes and modes <= GRAYSCALE_MODES else 3
    lost = tuple((side, float(np.median([d[side] for d in losses]))) for side in DETAIL_SIDES
                 ) if losses else ()
    return Survey(chans, tuple(sizes), len(picked), lost)


def native_format(source: str | os.PathLike) -> tuple[int, tuple[int, int] | None]:
    """(channels, size) a source has on its own: :attr:`Survey.native_size` (None: the
    backbone's own size)."""
    s = survey(source)
    return s.in_chans, s.native_size


def open_dataset(source: str | os.PathLike, split: str = "train", in_chans: int | None = None,
                 img_size: int | tuple[int, int] | None = None, data_root: str | None = None,
                 labeled: bool | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, cache: bool | None = None) -> ImageDataset:
    """A named dataset (``fashion-mnist``) or an image folder path.

    A folder is read through its packed cache (:mod:`hebbret.cache`; built on first use) unless
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
    from . import cache as packing

    if packing.cache_enabled() if cache is None else cache:
        return packing.packed(folder)
    return folder


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
        from .distributed import shard_bounds

        order = self.order()[self.start:]
        for i in range(0, len(order), batch_size):
            rows = order[i: i + batch_size]
            if drop_last and len(rows) < batch_size:
                return
            a, b = shard_bounds(len(rows), *self.shard)
            yield rows[a:b]


class _Batches(Sampler[list[int]]):
    """:meth:`EpochSampler.batches` as a DataLoader batch sampler."""

    def __init__(self, sampler: EpochSampler, batch_size: int, drop_last: bool) -> None:
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last

    def __iter__(self):
        return self.sampler.batches(self.batch_size, self.drop_last)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


def make_loader(dataset: ImageDataset, batch_size: int, seed: int | None = None, epoch: int = 0,
                skip_batches: int = 0, num_workers: int = 0, drop_last: bool = False,
                rows: Sequence[int] | None = None, device: torch.device | str = "cpu",
                shard: tuple[int, int] = (0, 1)) -> Iterable[Batch]:
    """Batches of :class:`Batch` over ``rows`` (default all); shuffled by (seed, epoch) unless
    seed is None. A ``batchable`` dataset (packed cache, native Fashion-MNIST) is batched by
    indexing its uint8 array, normalised on ``device`` (:class:`hebbret.cache.PackedLoader`);
    others are decoded by a DataLoader (``num_workers`` processes) and stay on the CPU.
    ``shard`` = (rank, ranks): only this rank's piece of every global batch is read."""
    rows = range(len(dataset)) if rows is None else rows
    sampler = EpochSampler(rows, seed, epoch, skip_batches * batch_size, shard)
    if dataset.batchable:
        from .cache import PackedLoader

        return PackedLoader(dataset, batch_size, sampler, device, drop_last)
    return DataLoader(dataset, batch_sampler=_Batches(sampler, batch_size, drop_last),
                      num_workers=num_workers, collate_fn=collate, persistent_workers=False)


def held_out(labels: Sequence[int], fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """A seeded boolean mask of ``int(fraction · n_c)`` rows of every class c: held-out rows of a
    training split, to choose settings on without touching test images."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        mask[rng.permutation(rows)[: int(fraction * len(rows))]] = True
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


def link_subset(src: str | os.PathLike, dst: str | os.PathLike, per_class: dict[str, int]
                ) -> dict[str, int]:
    """``dst/<split>/<class>/``: symlinks to the first ``per_class[split]`` images (natural
    order) of every class of ``src/<split>/<class>/``; returns the images linked per split."""
    src, dst = Path(src), Path(dst)
    counts = {}
    for split, n in per_class.items():
        counts[split] = 0
        items, _ = scan_image_folder(src / split, labeled=True)
        taken: dict[str, int] = {}
        for it in items:
            cls = it.class_name
            if taken.get(cls, 0) >= n:
                continue
            taken[cls] = taken.get(cls, 0) + 1
            link = dst / split / it.path
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to((src / split / it.path).resolve())
            counts[split] += 1
    return counts

