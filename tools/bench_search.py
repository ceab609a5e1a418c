"""Filtered and batch search, timed (issue 24's targets).

    python tools/bench_search.py INDEX QUERY_FOLDER --readme docs/results.md

Filtered: single-vector searches of rows of the collection, one at a time, over the whole index
and restricted (inside FAISS) to one label — about 10% of a 10-class collection — with the
rows of that filter computed once, as ``hebbret serve`` keeps them; the filtered hits are checked
against an exact search over the subset. p50 of each, alternating, in one process.

Batch: ``hebbret search INDEX QUERY_FOLDER --out FILE`` (one process, 256 images per embedding
call) against one ``hebbret search INDEX --image FILE`` process per image, timed on the first
``--per-process`` images and compared per image.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common.results import ResultsFile, markdown_table, publish
from hebbret.dedup import stored_vectors
from hebbret.index import load_index, search_loaded
from hebbret.search import query_images, select_rows

log = logging.getLogger("bench_search")
REPO = Path(__file__).resolve().parent.parent
SECTION = "search-results"  # docs/results.md markers


def filtered(index_dir: Path, queries: int, k: int = 10, seed: int = 0) -> dict[str, Any]:
    loaded = load_index(index_dir)
    index, items, _ = loaded
    labels = sorted({str(it.get("class_name", it.get("label"))) for it in items})
    rows = select_rows(items, label=labels[0])
    picked = np.random.default_rng(seed).permutation(index.ntotal)[:queries]
    q = stored_vectors(index, picked)  # the index's own vectors: any index type, no embedding
    plain, only = [], []
    for v in q:
        for out, where in ((plain, None), (only, rows)):
            t0 = time.perf_counter()
            search_loaded(loaded, v[None], k, rows=where)
            out.append(time.perf_counter() - t0)
    sub, k = stored_vectors(index, rows), min(k, len(rows))
    exact = rows[np.argsort(-(q @ sub.T), axis=1)[:, :k]]
    found = search_loaded(loaded, q, k, rows=rows)[1]
    return {"rows": int(index.ntotal), "filter_rows": int(len(rows)), "queries": queries,
            "p50_ms": 1000 * statistics.median(plain), "filtered_p50_ms":
            1000 * statistics.median(only), "ratio": statistics.median(only) /
            statistics.median(plain), "same_hits_as_exact": float((found == exact).mean())}


def batch(index_dir: Path, folder: Path, per_process: int) -> dict[str, Any]:
    paths = query_images(folder)
    cli = [sys.executable, "-m", "hebbret", "search", str(index_dir)]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        subprocess.run([*cli, str(folder), "--out", f"{tmp}/r.jsonl", "--device", "cpu"],
                       check=True, capture_output=True)
        batch_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for p in paths[:per_process]:
        subprocess.run([*cli, "--image", str(p), "--device", "cpu"], check=True,
                       capture_output=True)
    one_s = (time.perf_counter() - t0) / min(per_process, len(paths))
    return {"images": len(paths), "batch_s": batch_s, "batch_ms_per_image":
            1000 * batch_s / len(paths), "per_process_images": min(per_process, len(paths)),
            "per_process_ms_per_image": 1000 * one_s, "speedup": one_s * len(paths) / batch_s}


def tables(doc: dict[str, Any]) -> str:
    rows = doc["stages"]
    f = [[k, r["rows"], r["filter_rows"], r["p50_ms"], r["filtered_p50_ms"], r["ratio"],
          r["same_hits_as_exact"]] for k, r in rows.get("filtered", {}).items()]
    b = [[k, r["images"], r["batch_ms_per_image"], r["per_process_images"],
          r["per_process_ms_per_image"], r["speedup"]] for k, r in rows.get("batch", {}).items()]
    return (markdown_table(["index", "rows", "filter rows", "p50 ms", "filtered p50 ms",
                            "filtered / plain", "hits = exact over the subset"], f, digits=3)
            + "\n" + markdown_table(["index", "query images", "batch ms/image",
                                     "per-process calls timed", "per-process ms/image",
                                     "batch speed-up"], b))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("index", type=Path)
    p.add_argument("queries", type=Path, nargs="?", help="a folder of query images (batch)")
    p.add_argument("--name", help="row name (default: the index dir's)")
    p.add_argument("--filter-queries", type=int, default=500)
    p.add_argument("--per-process", type=int, default=20)
    p.add_argument("--results", type=Path, default=REPO / "tools" / "results" / "search.json")
    p.add_argument("--readme", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    res = ResultsFile(args.results, ["python", *sys.argv], REPO)
    name = args.name or args.index.name
    res.put("filtered", name, filtered(args.index, args.filter_queries))
    if args.queries:
        res.put("batch", name, batch(args.index, args.queries, args.per_process))
    publish(tables(res.doc), args.readme, SECTION)


if __name__ == "__main__":
    main()
