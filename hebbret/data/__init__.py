"""Image data, one topic per module (nothing here imports in a circle):

- :mod:`.folders`: scanning folders, decoding images, :class:`ImageFolder`, skipped files;
- :mod:`.named`: named datasets (Fashion-MNIST);
- :mod:`.survey`: what a folder's images are like (channels, sizes, detail lost when shrunk);
- :mod:`.sampling`: epoch order, per-rank shards, batches, held-out and few-label rows;
- :mod:`.packed`: the packed uint8 cache a folder is decoded into once;
- :mod:`.loader`: :func:`open_dataset` and :func:`make_loader`, the only module that sees all.
"""

from ..config import NAMED_DATASETS
from .folders import (
    IMAGE_EXTENSIONS,
    ImageDataset,
    ImageFolder,
    Item,
    SkippedFiles,
    load_image,
    natural_key,
    scan_image_folder,
    to_tensor,
)
from .loader import PackedLoader, make_loader, open_dataset
from .named import FashionMNIST
from .packed import PackedImages, cache_enabled, cache_root, open_packed, pack_folder
from .sampling import (
    Batch,
    EpochSampler,
    collate,
    few_label_rows,
    held_out,
    shard_bounds,
    stratified_folds,
)
from .survey import Survey, detail_lost, native_format, survey

__all__ = [
    "IMAGE_EXTENSIONS", "NAMED_DATASETS", "Batch", "EpochSampler", "FashionMNIST",
    "ImageDataset", "ImageFolder", "Item", "PackedImages", "PackedLoader", "SkippedFiles",
    "Survey", "cache_enabled", "cache_root", "collate", "detail_lost", "few_label_rows",
    "held_out", "load_image", "make_loader", "native_format", "natural_key", "open_dataset",
    "open_packed", "pack_folder", "scan_image_folder", "shard_bounds", "stratified_folds",
    "survey", "to_tensor",
]
