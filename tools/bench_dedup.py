"""Near-duplicates, measured: copies of known kinds planted among real images, then precision
and recall of the planted pairs that `hebbret dedup` groups, per kind and per threshold.

    hebbret pretrain /tmp/cifar10-5k/train --steps 500 --out runs/c3-c5k
    python tools/bench_dedup.py runs/c3-c5k /tmp/cifar10-5k/train --name "cifar10-5k train"
    python tools/bench_dedup.py runs/c3-c5k data/cifar10/test --name "cifar10 test" \\
        --readme docs/results.md            # rows: tools/results/dedup.json

Every image of the folder goes into the collection (as a symlink) and, for ``--per-kind``
originals per kind (seeded, each original copied once), one copy of that kind beside it. The
collection is embedded with the run's descriptor into an exact (Flat, cosine) index; one range
search at the lowest threshold gives every pair, then each threshold joins its pairs into
groups. A planted pair is found when original and copy share a group; precision counts every
pair of every group (a pair of two originals — a duplicate the folder already had, or a false
match — counts against it). Per row: the threshold that maximises F1 over all planted pairs,
and the highest at which re-encoded, resized and mirrored copies all reach precision and recall
≥ 0.95 (the rule the default ``DEDUP_THRESHOLD`` was chosen by, on a training folder; a test
folder only scores it).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from _common.results import ResultsFile, markdown_table, publish
from hebbret.config import DEDUP_THRESHOLD
from hebbret.data import scan_image_folder
from hebbret.dedup import components, similar_pairs
from hebbret.embed import extract_embeddings
from hebbret.index import build_index, load_index

log = logging.getLogger("bench_dedup")
REPO = Path(__file__).resolve().parent.parent
SECTION = "dedup"  # docs/results.md markers


def _crop(im: Image.Image, keep: float = 0.9) -> Image.Image:
    w, h = im.size
    dx, dy = round(w * (1 - keep) / 2), round(h * (1 - keep) / 2)
    return im.crop((dx, dy, w - dx, h - dy))


# kind -> (what it is, the copy, the file suffix it is saved with)
KINDS: dict[str, tuple[str, Callable[[Image.Image], Image.Image], str]] = {
    "jpeg50": ("re-encoded as JPEG at quality 50", lambda im: im, ".jpg"),
    "upscale2x": ("resized to twice the side (bicubic), PNG",
                  lambda im: im.resize((im.width * 2, im.height * 2), Image.BICUBIC), ".png"),
    "hflip": ("mirrored left-right, PNG", ImageOps.mirror, ".png"),
    "crop90": ("the central 90% of each side, PNG", _crop, ".png"),
    "bright20": ("brightness × 1.2, PNG", lambda im: ImageEnhance.Brightness(im).enhance(1.2),
                 ".png"),
}
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.80, 0.995, 0.01))
TARGET_KINDS = ("jpeg50", "upscale2x", "hflip")  # issue 24: P and R ≥ 0.95 for these
TARGET = 0.95


def plant(source: Path, collection: Path, per_kind: int, seed: int
          ) -> list[tuple[str, str, str]]:
    """``collection/<class>/``: every image of ``source`` linked, plus the planted copies;
    returns (original, copy, kind) paths relative to ``collection``."""
    items, _ = scan_image_folder(source, labeled=True)
    picked = np.random.default_rng(seed).permutation(len(items))[: per_kind * len(KINDS)]
    for it in items:
        link = collection / it.path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to((source / it.path).resolve())
    pairs = []
    for k, (kind, (_, make, suffix)) in enumerate(KINDS.items()):
        for i in picked[k * per_kind: (k + 1) * per_kind]:
            orig = Path(items[i].path)
            copy = orig.with_name(f"{orig.stem}__{kind}{suffix}")
            with Image.open(source / orig) as im:
                make(im.convert("RGB")).save(collection / copy,
                                               **({"quality": 50} if suffix == ".jpg" else {}))
            pairs.append((str(orig), str(copy), kind))
    return pairs


def score(labels: np.ndarray, pairs: list[tuple[int, int, str]]) -> dict[str, Any]:
    """Precision / recall of the planted ``pairs`` (row, row, kind) under a grouping."""
    sizes = np.bincount(labels, minlength=len(labels))
    predicted = float((sizes * (sizes - 1) // 2).sum())
    found = np.array([labels[a] == labels[b] for a, b, _ in pairs])
    out: dict[str, Any] = {"predicted_pairs": int(predicted), "found": int(found.sum()),
                           "recall": float(found.mean()),
                           "precision": float(found.sum() / predicted) if predicted else 1.0}
    out["f1"] = (2 * out["precision"] * out["recall"] / (out["precision"] + out["recall"])
                 if found.any() else 0.0)
    for kind in KINDS:
        mine = np.array([k == kind for *_, k in pairs])
        copies = np.array([b for (_, b, k) in pairs if k == kind])
        claimed = float((sizes[labels[copies]] - 1).sum())  # pairs that hold one of the copies
        out[kind] = {"recall": float(found[mine].mean()),
                     "precision": float(found[mine].sum() / claimed) if claimed else 1.0}
    return out


def measure(run: Path, source: Path, per_kind: int, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-dedup-") as tmp:
        work = Path(tmp)
        planted = plant(source, work / "collection", per_kind, seed)
        emb = extract_embeddings(run, work / "collection", work / "emb", quiet=True)
        build_index(emb, work / "index")
        index, items, _ = load_index(work / "index")
        row = {it["path"]: i for i, it in enumerate(items)}
        pairs = [(row[a], row[b], kind) for a, b, kind in planted]
        src, dst, sim = similar_pairs(index, min(THRESHOLDS), quiet=True)
        n = index.ntotal
    sweep = {f"{t:.2f}": score(components(n, src[sim > t], dst[sim > t]), pairs)
             for t in THRESHOLDS}
    best = max(sweep, key=lambda t: sweep[t]["f1"])
    return {"images": n - len(pairs), "planted": len(pairs), "per_kind": per_kind,
            "kinds": {k: v[0] for k, v in KINDS.items()}, "run": str(run), "source": str(source),
            "best_f1_threshold": float(best), "sweep": sweep}


def meets_target(sweep: dict[str, Any]) -> float | None:
    """The highest threshold at which every kind of TARGET_KINDS has precision and recall
    ≥ TARGET (None: none does): the rule the default is chosen by, on a training folder."""
    ok = [float(t) for t, s in sweep.items()
          if all(min(s[k]["precision"], s[k]["recall"]) >= TARGET for k in TARGET_KINDS)]
    return max(ok) if ok else None


def tables(doc: dict[str, Any], threshold: float) -> str:
    rows, sweep = [], []
    for name, r in doc["stages"].get("dedup", {}).items():
        at = r["sweep"][f"{threshold:.2f}"]
        rows.append([name, r["images"], r["planted"],
                     *(f"{at[k]['precision']:.3f} / {at[k]['recall']:.3f}" for k in KINDS),
                     f"{at['precision']:.3f} / {at['recall']:.3f}", f"{r['best_f1_threshold']:.2f}",
                     meets_target(r["sweep"])])
        sweep += [[name, t, s["precision"], s["recall"], s["f1"], s["predicted_pairs"]]
                  for t, s in r["sweep"].items() if float(t) in (0.80, 0.82, 0.84, 0.86, 0.88,
                                                                  0.90, 0.94)]
    head = (f"Planted pairs found, precision / recall at the default threshold "
            f"{threshold:.2f}:\n\n")
    return (head + markdown_table(["collection", "images", "copies", *KINDS, "all kinds",
                                   "best-F1 threshold", "highest meeting 0.95"], rows)
            + "\nAll kinds pooled, by threshold:\n\n"
            + markdown_table(["collection", "threshold", "precision", "recall", "F1",
                              "pairs reported"], sweep, digits=3))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="the run dir whose descriptor embeds the images")
    p.add_argument("source", type=Path, help="a labeled image folder (<class>/<image>)")
    p.add_argument("--name", help="row name (default: the folder's)")
    p.add_argument("--per-kind", type=int, default=200, help="copies planted per kind")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="measure again a row already there")
    p.add_argument("--results", type=Path, default=REPO / "tools" / "results" / "dedup.json")
    p.add_argument("--readme", type=Path, help=f"also put the tables in this file's "
                   f"'{SECTION}' section (docs/results.md)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    res = ResultsFile(args.results, ["python", *sys.argv], REPO)
    name = args.name or args.source.name
    if args.force or not res.get("dedup", name):
        res.put("dedup", name, measure(args.run, args.source, args.per_kind, args.seed))
    publish(tables(res.doc, DEDUP_THRESHOLD), args.readme, SECTION)


if __name__ == "__main__":
    main()
