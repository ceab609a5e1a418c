"""Image folders for benchmarks: subsets of a folder as symlinks."""

from __future__ import annotations

import os
from pathlib import Path

from hebbret.data import scan_image_folder


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

