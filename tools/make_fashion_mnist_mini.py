"""Make the embedded default dataset: a class-balanced, seeded subset of Fashion-MNIST.

Reads the original idx files (Debian package dataset-fashion-mnist) and writes
``hebbret/datasets/fashion_mnist_mini.npz`` with uint8 images and labels per split.

    python tools/make_fashion_mnist_mini.py --train-per-class 500 --test-per-class 100
"""

from __future__ import annotations

import argparse
import io
import logging

import numpy as np

from hebbret._io import write_bytes
from hebbret.data import FashionMNIST

log = logging.getLogger("make_fashion_mnist_mini")


def pick(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class]
                                   for c in np.unique(labels)]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-root", default=None, help="folder with the idx files")
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="hebbret/datasets/fashion_mnist_mini.npz")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    rng = np.random.default_rng(args.seed)
    arrays = {}
    for split, per_class in (("train", args.train_per_class), ("test", args.test_per_class)):
        ds = FashionMNIST(args.data_root, split)
        rows = pick(ds.labels, per_class, rng)
        arrays[f"{split}_images"] = ds.images[rows]
        arrays[f"{split}_labels"] = ds.labels[rows].astype(np.uint8)
        arrays[f"{split}_source_rows"] = rows.astype(np.int32)
        log.info("%s: %d images", split, len(rows))
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_bytes(args.out, buf.getvalue())
    log.info("wrote %s (%.1f MB)", args.out, len(buf.getvalue()) / 1e6)


if __name__ == "__main__":
    main()
