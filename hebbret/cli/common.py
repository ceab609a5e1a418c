"""Parent parsers for options several commands share (dinov2's habit), argument types, and the
plain tables the commands print. Imports nothing heavy."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..config import DEVICES, FLIP_CHOICES, FLIPS, POOLS, PretrainConfig


def json_object(text: str) -> dict:
    """argparse type: a JSON object, e.g. '{"init_radius": 5}'."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"init_radius\": 5}'")
    return value


def parent(*options: tuple[tuple[str, ...], dict[str, Any]]) -> argparse.ArgumentParser:
    """A parent parser holding ``options``; a fresh one per command (argparse shares a
    parent's actions between the parsers that use it)."""
    p = argparse.ArgumentParser(add_help=False)
    for flags, kwargs in options:
        p.add_argument(*flags, **kwargs)
    return p


def device(default: str | None = None) -> argparse.ArgumentParser:
    return parent((("--device",), dict(choices=DEVICES, default=default,
                                       help="auto: CUDA when torch sees it, else cpu")))


def quiet() -> argparse.ArgumentParser:
    return parent((("--quiet",), dict(action="store_true", help="no progress output")))


def dataset(split: str | None = None) -> argparse.ArgumentParser:
    return parent((("--split",), dict(default=split, help="split of a named dataset "
                                      "(train/test)")),
                  (("--data-root",), dict(help="folder with a named dataset's files")))


def image() -> argparse.ArgumentParser:
    return parent((("--in-chans",), dict(type=int, choices=[1, 3], help="default: 1 if the "
                                         "folder is grayscale, else 3")),
                  (("--img-size",), dict(type=int, help="side images are resized to (default: "
                                         "the folder's own when square and ≤ 64; else `run` "
                                         "chooses from the images' detail, `pretrain` takes "
                                         "the backbone's)")))


def budget(required: bool = False) -> argparse.ArgumentParser:
    """--labels-per-class | --label-fraction."""
    p = argparse.ArgumentParser(add_help=False)
    few = p.add_mutually_exclusive_group(required=required)
    few.add_argument("--labels-per-class", type=int)
    few.add_argument("--label-fraction", type=float)
    return p


def search_params() -> argparse.ArgumentParser:
    return parent((("--nprobe",), dict(type=int, help="IVF lists visited per query")),
                  (("--ef-search",), dict(type=int, help="HNSW search depth")))


def descriptor() -> argparse.ArgumentParser:
    """Which descriptor of a run to take (default: its model card's)."""
    return parent((("--layer",), dict(help="features or block<i>, several joined by '+' "
                                      "(default: the model card's)")),
                  (("--pool",), dict(choices=POOLS, help="default: the model card's")),
                  (("--gem-p",), dict(type=float, help="GeM's exponent (default: the model "
                                      "card's)")),
                  (("--grid",), dict(type=int, help="pool each cell of a grid×grid partition "
                                     "of the map (default: the model card's)")),
                  (("--flip",), dict(choices=FLIPS, help="also pool the mirrored (h) or every "
                                     "flipped (hv) image and sum: a flip-invariant descriptor "
                                     "(default: the model card's)")),
                  (("--no-pca",), dict(action="store_true", help="the pooled descriptor "
                                       "without the backbone's fitted PCA")))


FLIP_CHOICE = dict(choices=FLIP_CHOICES, help="the views the descriptor sums: none (the image), "
                   "h (+ its mirror image), hv (+ upside down, and both); auto: the backbone's "
                   "own or none, whichever gives the higher kNN top-1 on held-out labeled "
                   "training rows (needs the descriptor PCA)")
DESCRIPTOR_DIMS = dict(type=int, help="dimensions of the embedding's PCA, fitted on the "
                       f"training images after pretraining (default "
                       f"{PretrainConfig.descriptor_dims}; 0: none)")


def print_table(header: list[str], rows: list[tuple]) -> None:
    """A markdown table on stdout: what a command answers."""
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
