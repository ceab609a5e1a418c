"""`hebbret index update` against a rebuild: add images to an index, time both, compare hits.

    python tools/bench_update.py RUN /work/data/cifar10/train --add 1000 \\
        --factory Flat IVF256,Flat --work /tmp/bench-update --readme docs/results.md

The folder is linked (symlinks) into ``WORK/images`` without ``--add`` seeded-random images;
it is embedded and indexed once per factory (not timed). Then the held-out images are linked
back and the index is brought up to date with ``update_index`` (timed), and, as the
alternative, rebuilt from the folder: ``extract_embeddings`` (packing the folder, as a first
embedding does) + ``build_index`` (timed). Reported per factory: both times, the speed-up, and
how the two indexes agree on ``--queries`` rows of the full collection: the share of queries
with identical top-10 paths (Flat should be 1.0) and each one's recall@10 against exact
search.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common.results import ResultsFile, markdown_table, publish
from hebbret.data import scan_image_folder
from hebbret.embed import extract_embeddings, load_embeddings
from hebbret.index import build_index, load_index, search_index
from hebbret.update import update_index

log = logging.getLogger("bench_update")
REPO = Path(__file__).resolve().parent.parent
SECTION = "update-results"  # docs/results.md markers <!-- update-results:begin/end -->


def link_folder(src: Path, dst: Path, held_out: int, seed: int) -> list[str]:
    """Link every image of ``src`` into ``dst`` but ``held_out`` seeded-random ones; returns
    the paths held out."""
    items, _ = scan_image_folder(src)
    out = set(np.random.default_rng(seed).choice(len(items), held_out, replace=False).tolist())
    for i, it in enumerate(items):
        if i not in out:
            link(src, dst, it.path)
    return [items[i].path for i in sorted(out)]


def link(src: Path, dst: Path, path: str) -> None:
    target = dst / path
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.symlink_to((src / path).resolve())


def top_paths(index: Path, q: np.ndarray, k: int) -> list[list[str]]:
    _, ids, items, _ = search_index(index, q, k)
    return [[items[i]["path"] for i in row if i >= 0] for row in ids]


def exact_paths(emb_dir: Path, q: np.ndarray, k: int) -> list[list[str]]:
    """Top-k paths by cosine over the whole embeddings dir (what a Flat IP index answers)."""
    x, items, _ = load_embeddings(emb_dir)
    x = np.array(x, np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
    qn = q / (np.linalg.norm(q, axis=1, keepdims=True) + 1e-12)
    top = np.argsort(-(qn @ x.T), axis=1)[:, :k]
    return [[items[i]["path"] for i in row] for row in top]


def recall(found: list[list[str]], truth: list[list[str]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth,
                                                                         strict=True)]))


def bench(run: str, src: Path, work: Path, add: int, factories: list[str], queries: int,
          nprobe: int | None, seed: int) -> dict[str, dict[str, Any]]:
    shutil.rmtree(work, ignore_errors=True)
    images = work / "images"
    os.environ["HEBBRET_CACHE_DIR"] = str(work / "cache")
    held = link_folder(src, images, add, seed)
    base_emb = extract_embeddings(run, images, work / "emb-base", quiet=True)
    bases = {f: build_index(base_emb, work / f"base-{i}", factory=f,
                            nprobe=nprobe if "IVF" in f else None)
             for i, f in enumerate(factories)}
    for path in held:
        link(src, images, path)
    t0 = time.perf_counter()
    full_emb = extract_embeddings(run, images, work / "emb-full", quiet=True)
    t_embed = time.perf_counter() - t0
    x = load_embeddings(full_emb)[0]
    rows = np.random.default_rng(seed + 1).choice(len(x), min(queries, len(x)), replace=False)
    q = np.asarray(x[np.sort(rows)], np.float32)
    truth = exact_paths(full_emb, q, 10)
    out = {}
    for i, factory in enumerate(factories):
        t0 = time.perf_counter()
        rebuilt = build_index(full_emb, work / f"rebuilt-{i}", factory=factory,
                              nprobe=nprobe if "IVF" in factory else None)
        t_rebuild = t_embed + time.perf_counter() - t0
        t0 = time.perf_counter()
        summary = update_index(bases[factory], device="cpu", quiet=True)
        t_update = time.perf_counter() - t0
        got, want = top_paths(bases[factory], q, 10), top_paths(rebuilt, q, 10)
        out[factory] = {
            "factory": factory, "collection": len(x), "added": summary["added"],
            "update_s": round(t_update, 2), "rebuild_s": round(t_rebuild, 2),
            "rebuild_embed_s": round(t_embed, 2), "speedup": round(t_rebuild / t_update, 1),
            "identical_top10": float(np.mean([g == w for g, w in zip(got, want, strict=True)])),
            "recall10_updated": round(recall(got, truth), 4),
            "recall10_rebuilt": round(recall(want, truth), 4), "queries": len(q),
            "nprobe": load_index(bases[factory])[2]["search_params"].get("nprobe")}
        log.info("%s: %s", factory, out[factory])
    return out


def render(doc: dict[str, Any]) -> str:
    rows = doc.get("stages", {}).get("update", {})
    if not rows:
        return "Not measured yet.\n"
    table = [[r["factory"], r["collection"], r["added"], r["update_s"], r["rebuild_s"],
              r["speedup"], r["identical_top10"], r["recall10_updated"], r["recall10_rebuilt"]]
             for r in rows.values()]
    first = next(iter(rows.values()))
    return (markdown_table(["factory", "rows", "added", "update s", "rebuild s", "speed-up",
                            "identical top-10", "recall@10 updated", "recall@10 rebuilt"],
                           table, digits=3)
            + f"\nRebuild = embedding the whole folder ({first['rebuild_embed_s']} s, packing "
              f"included) + `index build`; recall@10 against exact cosine search on "
              f"{first['queries']} rows (`{first['command']}`, {first['git_commit']}, "
              f"{first['machine']}).\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="run dir whose model embeds the images")
    parser.add_argument("folder", help="image folder (e.g. /work/data/cifar10/train)")
    parser.add_argument("--add", type=int, default=1000, help="images added by the update")
    parser.add_argument("--factory", nargs="+", default=["Flat", "IVF256,Flat"])
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="/tmp/hebbret-bench-update", help="scratch dir "
                        "(replaced)")
    parser.add_argument("--results", default=str(REPO / "tools/results/update.json"))
    parser.add_argument("--readme", default="", help="rewrite this file's update section "
                        "(docs/results.md)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    res = ResultsFile(args.results, ["python", "tools/bench_update.py", *argv], REPO)
    rows = bench(args.run, Path(args.folder), Path(args.work), args.add, args.factory,
                 args.queries, args.nprobe, args.seed)
    for factory, row in rows.items():
        res.put("update", factory, row)
    publish(render(res.doc), args.readme, SECTION)
    return res.doc


if __name__ == "__main__":
    main()
