"""Scaling out on this machine: data-parallel pretraining under torchrun, and a FAISS index of a
million vectors built and searched on disk. Results JSON + a docs/results.md table.

    python tools/bench_scale.py --pretrain-data data/cifar10-5k/train \\
        --vectors runs/cifar10-repro/c3-hebbian/index_pca256 --readme docs/results.md

- ``pretrain``: Hebbian steps/s of ``hebb_softhebb_c3`` at one global batch, as 1 process
  (all threads), 1 process (1 thread) and 2 gloo processes (1 thread each), each a real
  ``torchrun -m hebbret pretrain``; parallel efficiency = 2-process rate / (2 × 1-thread rate).
- ``index``: ``--n`` vectors (default 1,000,000) of ``--dim``: noisy copies of the rows of
  ``--vectors`` (e.g. L2-normalised PCA'd Hebbian features; copy = normalise(x + σ·ε)), or, without
  it, clustered synthetic vectors; an on-disk IVF index (``hebbret.index.build_index(on_disk=
  True)``), built and searched in child processes whose peak resident memory (VmHWM) is read
  from /proc; recall@10 against exact search for queries that are fresh noisy copies (not in
  the index), at two nprobe settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common.results import ResultsFile, publish
from _common.scale_tables import render
from _common.vectors import exact_neighbours, make_vectors, memory
from hebbret.artifacts import EMBEDDINGS
from hebbret.runs import read_card
from hebbret.runtime import load_average

log = logging.getLogger("bench_scale")
REPO = Path(__file__).resolve().parent.parent
SECTION = "scale-results"  # docs/results.md markers <!-- scale-results:begin/end -->


# ----------------------------------------------------------------------------- pretraining
def pretrain_rate(data: str, nproc: int, threads: int, steps: int, batch: int, work: Path,
                  widths: list[int] | None) -> dict[str, Any]:
    out = work / f"pretrain-{nproc}p-{threads}t"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(29500 + nproc * 10 + threads),
           "-m", "hebbret", "pretrain", data, "--steps", str(steps), "--batch-size", str(batch),
           "--img-size", "32", "--out", str(out), "--quiet"]
    if widths:
        cmd += ["--model-kwargs", json.dumps({"widths": widths})]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    training = read_card(out).training
    return {"processes": nproc, "threads_per_process": threads, "global_batch": batch,
            "steps": training["steps"], "in_steps_s": training["train_seconds"],
            "wall_s": round(wall, 1), "steps_per_s": round(steps / training["train_seconds"], 3),
            "world_size": training["world_size"], "command": " ".join(cmd[2:])}


def bench_pretrain(args: argparse.Namespace, res: ResultsFile) -> None:
    work = Path(args.work)
    rows = {}
    for nproc, threads in ((1, os.cpu_count() or 1), (1, 1), (2, 1)):
        rows[f"{nproc}p{threads}t"] = r = pretrain_rate(
            args.pretrain_data, nproc, threads, args.steps, args.batch, work, args.widths)
        log.info("pretrain %d process(es) × %d thread(s): %.3f steps/s", nproc, threads,
                 r["steps_per_s"])
    one, two = rows["1p1t"]["steps_per_s"], rows["2p1t"]["steps_per_s"]
    res.put("scale", "pretrain", {"rows": rows, "parallel_efficiency": round(two / (2 * one), 3),
                                  "speedup_2p_vs_1p_all_threads":
                                      round(two / rows[f"1p{os.cpu_count() or 1}t"]["steps_per_s"],
                                            3), "load_avg_end": load_average()})


# ----------------------------------------------------------------------------------- index
def child_build(emb: str, out: str, factory: str, nprobe: int) -> dict[str, Any]:
    from hebbret.index import build_index, index_info

    t0 = time.perf_counter()
    build_index(emb, out, factory=factory, nprobe=nprobe, on_disk=True)
    wall = time.perf_counter() - t0
    info = index_info(out)
    return {"build_s": round(wall, 1), "memory_mib": memory(), "recall_at_10_held_out_rows":
            info["recall_at_10_vs_flat"], "size_on_disk_mib": round(info["size_on_disk_bytes"]
                                                                   / 2**20, 1)}


def child_search(index_dir: str, queries: str, truth: str, nprobes: list[int], batch: int
                 ) -> dict[str, Any]:
    from faiss.contrib.evaluation import knn_intersection_measure

    from hebbret.index import search_index

    before = memory()  # the interpreter with numpy, torch and FAISS imported, no index yet
    q = np.load(queries)
    gt = np.load(truth)
    rows = {}
    for nprobe in nprobes:
        search_index(index_dir, q[:batch], k=10, nprobe=nprobe)  # warm: open + page in
        found, t0 = [], time.perf_counter()
        for i in range(0, len(q), batch):
            found.append(search_index(index_dir, q[i: i + batch], k=10, nprobe=nprobe)[1])
        secs = time.perf_counter() - t0
        ids = np.concatenate(found)
        recall = float(knn_intersection_measure(gt, ids))
        rows[str(nprobe)] = {"qps": round(len(q) / secs, 1), "recall_at_10": round(recall, 4),
                             "queries": len(q), "batch": batch}
    return {"by_nprobe": rows, "memory_mib": memory(), "memory_before_index_mib": before}


def run_child(kind: str, **kwargs: Any) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(kwargs)],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"child {kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_index(args: argparse.Namespace, res: ResultsFile) -> None:
    work = Path(args.work)
    emb = work / f"vectors-{args.n}"
    what = make_vectors(emb, args.n, args.dim, args.vectors, args.sigma, seed=0)
    x = np.load(emb / EMBEDDINGS, mmap_mode="r")
    raw_mib = x.nbytes / 2**20
    # queries: fresh noisy copies made the same way (not rows of the index)
    qdir = work / "queries"
    make_vectors(qdir, args.queries, args.dim, args.vectors, args.sigma, seed=1)
    q = np.ascontiguousarray(np.load(qdir / EMBEDDINGS))
    np.save(work / "q.npy", q)
    truth = exact_neighbours(emb, q)
    np.save(work / "truth.npy", truth)
    index_dir = work / "index"
    build = run_child("build", emb=str(emb), out=str(index_dir), factory=args.factory,
                      nprobe=args.nprobe[0])
    search = run_child("search", index_dir=str(index_dir), queries=str(work / "q.npy"),
                       truth=str(work / "truth.npy"), nprobes=args.nprobe, batch=args.query_batch)
    res.put("scale", "index", {
        "vectors": what, "n": args.n, "dim": int(x.shape[1]), "raw_float32_mib": round(raw_mib, 1),
        "factory": args.factory, "build": build, "search": search,
        "search_peak_rss_over_raw": round(search["memory_mib"]["VmHWM"] / raw_mib, 3),
        "search_index_rss_over_raw": round((search["memory_mib"]["VmHWM"]
                                            - search["memory_before_index_mib"]["VmRSS"])
                                           / raw_mib, 3),
        "load_avg_end": load_average()})


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        fn = {"build": child_build, "search": child_search}[argv[1]]
        print(json.dumps(fn(**json.loads(argv[2]))))
        return {}
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", nargs="*", choices=["pretrain", "index"],
                        default=["pretrain", "index"], help="none: only rewrite the results page")
    parser.add_argument("--pretrain-data", help="image folder for the pretraining rows")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64, help="global batch")
    parser.add_argument("--widths", type=int, nargs=3, help="c3 widths (smoke runs)")
    parser.add_argument("--vectors", help="rows the index vectors are noisy copies of: a .npy "
                        "(N, D) file, or an index dir (its embeddings as the index sees them)")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256, help="synthetic vectors only")
    parser.add_argument("--sigma", type=float, default=0.03)
    parser.add_argument("--factory", default="IVF1024,SQ6")
    parser.add_argument("--nprobe", type=int, nargs=2, default=[16, 64])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--query-batch", type=int, default=100)
    parser.add_argument("--work", default=tempfile.gettempdir() + "/hebbret-scale")
    parser.add_argument("--results", default=str(REPO / "tools/results/scale.json"))
    parser.add_argument("--readme", default="", help="rewrite this file's scale section (docs/results.md)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    res = ResultsFile(args.results, ["python", "tools/bench_scale.py", *argv], REPO,)
    if "pretrain" in args.part:
        if not args.pretrain_data:
            parser.error("--pretrain-data is required for the pretrain part")
        bench_pretrain(args, res)
    if "index" in args.part:
        bench_index(args, res)
    publish(render(res.doc), args.readme, SECTION)
    return res.doc


if __name__ == "__main__":
    main()
