"""What a folder's images are like: channels, sizes and the detail they lose when shrunk."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .folders import scan_image_folder

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

