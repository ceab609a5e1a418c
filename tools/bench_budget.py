"""`hebbret index build --max-memory SIZE --target-recall R` on a million vectors: does the index
it chooses on its 20k-row sample keep the budget and the recall on the whole collection?

    python tools/bench_budget.py --vectors runs/c3/pca256.npy \\
        --budget 2G:0.95 300M:0.9 --readme docs/results.md

The collection is the one ``tools/bench_scale.py`` builds (``--n`` noisy copies of the rows of
``--vectors``, L2-normalised; fresh copies as queries, their exact top-10 as the truth). Each
budget is a real ``hebbret index build`` process (wall seconds and peak memory from wait4);
then, in this process, the index is opened and searched with the nprobe it recorded: recall@10
against the truth, the memory the open index adds (RSS), and its size on disk, each set against
the budget and against what the choice predicted from its sample.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from _common.child import run_child
from _common.results import ResultsFile, markdown_table, publish
from _common.vectors import exact_neighbours, make_vectors, memory
from hebbret.budget import parse_size

log = logging.getLogger("bench_budget")
REPO = Path(__file__).resolve().parent.parent
SECTION = "budget-results"  # docs/results.md markers


def collection(work: Path, n: int, dim: int, source: str | None, sigma: float, queries: int
               ) -> tuple[Path, np.ndarray, np.ndarray, str]:
    """The embeddings dir of ``n`` vectors, the queries (Q, D), their exact top-10 (Q, 10) and
    what the vectors are."""
    emb = work / f"vectors-{n}"
    what = make_vectors(emb, n, dim, source, sigma, seed=0)
    make_vectors(work / "queries", queries, dim, source, sigma, seed=1)
    q = np.ascontiguousarray(np.load(work / "queries" / "embeddings.npy"))
    return emb, q, exact_neighbours(emb, q), what


def measure(index_dir: Path, q: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Open the index and search every query at its recorded nprobe."""
    from faiss.contrib.evaluation import knn_intersection_measure

    from hebbret.index import index_info, load_index, search_loaded

    before = memory()["VmRSS"]
    loaded = load_index(index_dir)
    opened = memory()["VmRSS"]
    ids = search_loaded(loaded, q, 10)[1]
    info = index_info(index_dir)
    return {"recall_at_10": round(float(knn_intersection_measure(truth, ids)), 4),
            "open_rss_mib": round(opened - before, 1),
            "size_on_disk_mib": round(info["size_on_disk_bytes"] / 2**20, 1),
            "budget": info["budget"]}


def bench(args: argparse.Namespace, res: ResultsFile) -> None:
    work = Path(args.work)
    emb, q, truth, what = collection(work, args.n, args.dim, args.vectors, args.sigma,
                                     args.queries)
    for spec in args.budget:
        size, _, recall = spec.partition(":")
        target = float(recall or 0.9)
        out = work / f"index-{size}-{target:g}"
        try:
            cost = run_child([sys.executable, "-m", "hebbret", "index", "build", str(emb),
                              "--out", str(out), "--max-memory", size, "--target-recall",
                              str(target)])
        except RuntimeError:  # the command refused: no candidate fits (its log says which came closest)
            res.put("budget", spec, {"n": args.n, "dim": q.shape[1], "vectors": what,
                                     "max_memory": size, "target_recall": target,
                                     "refused": True, "queries": len(q)})
            continue
        got = measure(out, q, truth)
        chosen = got.pop("budget")["chosen"]
        row = {"n": args.n, "dim": q.shape[1], "vectors": what, "max_memory": size,
               "max_memory_mib": round(parse_size(size) / 2**20, 1), "target_recall": target,
               "factory": chosen["factory"], "nprobe": chosen["nprobe"],
               "predicted_recall_at_10": round(chosen["recall_at_10"], 4),
               "sample_recall_at_10": round(chosen["sample_recall_at_10"], 4),
               "code_recall_at_10": round(chosen["code_recall_at_10"], 4),
               "predicted_memory_mib": round(chosen["memory_bytes"] / 2**20, 1),
               "build": cost, "queries": len(q), **got}
        row["meets_budget"] = max(row["size_on_disk_mib"], row["open_rss_mib"]) <= \
            row["max_memory_mib"]
        row["meets_recall"] = row["recall_at_10"] >= target
        log.info("%s: %s", spec, row)
        res.put("budget", spec, row)


def render(doc: dict[str, Any]) -> str:
    rows = doc.get("stages", {}).get("budget", {})
    if not rows:
        return "Not measured yet.\n"
    table = [[f"{r['max_memory']}, recall {r['target_recall']:g}", "none fits: refused",
              *["–"] * 10] if r.get("refused") else
             [f"{r['max_memory']}, recall {r['target_recall']:g}", r["factory"], r["nprobe"],
              r["predicted_memory_mib"], r["size_on_disk_mib"], r["open_rss_mib"],
              "yes" if r["meets_budget"] else "**no**", r["predicted_recall_at_10"],
              r["recall_at_10"], "yes" if r["meets_recall"] else "**no**", r["build"]["wall_s"],
              r["build"]["peak_rss_gib"]] for r in rows.values()]
    first = next(iter(rows.values()))
    return (f"**{first['n']:,} × {first['dim']}** ({first['vectors']}; {first['queries']} fresh "
            f"query copies, recall@10 against their exact top-10)\n\n"
            + markdown_table(["budget", "chosen", "nprobe", "predicted MiB", "on disk MiB",
                              "RSS when opened MiB", "within budget", "recall@10 predicted",
                              "recall@10 (1M)", "meets recall", "build s", "build peak GiB"],
                             table, digits=3)
            + f"\n(`{first['command']}`, {first['git_commit']}, {first['machine']}.)\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", nargs="+", default=["2G:0.95", "300M:0.9"],
                   help="SIZE:RECALL pairs, each one `index build --max-memory SIZE "
                   "--target-recall RECALL`")
    p.add_argument("--vectors", help="rows the vectors are noisy copies of (.npy or an index "
                   "dir); default: clustered synthetic vectors")
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=256, help="synthetic vectors only")
    p.add_argument("--sigma", type=float, default=0.03)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--work", default="/tmp/hebbret-budget")
    p.add_argument("--results", type=Path, default=REPO / "tools" / "results" / "budget.json")
    p.add_argument("--readme", type=Path, help=f"put the table in this file's '{SECTION}' "
                   "section (docs/results.md)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    res = ResultsFile(args.results, ["python", "tools/bench_budget.py", *(argv or sys.argv[1:])],
                      REPO)
    bench(args, res)
    publish(render(res.doc), args.readme, SECTION)


if __name__ == "__main__":
    main()
