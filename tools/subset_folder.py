"""A class-balanced subset of an image folder with train/ and test/, as symlinks.

    python tools/subset_folder.py data/cifar10 data/cifar10-5k --train 500 --test 100

DST/{train,test}/<class>/ link to the first N images (natural order) of every class of
SRC/{train,test}/<class>/ — a folder of a few thousand real images for `hebbret run DST`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common.folders import link_subset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--train", type=int, default=500, help="train images per class")
    parser.add_argument("--test", type=int, default=100, help="test images per class")
    args = parser.parse_args()
    src = args.src / "cifar10" if (args.src / "cifar10" / "train").is_dir() else args.src
    print(link_subset(src, args.dst, {"train": args.train, "test": args.test}))


if __name__ == "__main__":
    main()
