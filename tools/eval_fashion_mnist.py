"""Hebbian vs random-init features of a backbone on Fashion-MNIST: kNN, linear probe, retrieval.

Runs the library's stages (pretrain -> embed -> eval) for the Hebbian rule and for rule ``none``
(random weights; BatchNorm statistics still calibrated by one pass), train split as database and
test split as queries, and writes ``tools/results/fashion_mnist.json`` plus a markdown table.
Stages whose outputs exist are reused, so a killed run picks up where it stopped.

    python tools/eval_fashion_mnist.py --work runs/fmnist
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import sys
import time
from pathlib import Path

import hebbret
from hebbret._io import write_json
from hebbret.embed import extract_embeddings
from hebbret.evaluate import evaluate

log = logging.getLogger("eval_fashion_mnist")


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, round(time.perf_counter() - t0, 1)


def run_variant(work: Path, name: str, rule: str, args: argparse.Namespace) -> dict:
    run = work / name / "run"
    row: dict = {"rule": rule}
    if not (run / "model.safetensors").exists():
        _, row["pretrain_s"] = timed(hebbret.pretrain, "fashion-mnist", model=args.model, rule=rule,
                                     out=str(run), quiet=True, resume=(run / "state.pt").exists())
    embs = {}
    for split in ("train", "test"):
        emb = work / name / f"emb_{split}"
        if not (emb / "meta.json").exists():
            _, row[f"embed_{split}_s"] = timed(extract_embeddings, run, "fashion-mnist", emb,
                                               split=split, quiet=True)
        embs[split] = str(emb)
    knn, row["knn_s"] = timed(evaluate, "knn", embs["train"], embs["test"], ks=[20])
    ret, row["retrieval_s"] = timed(evaluate, "retrieval", embs["train"], embs["test"],
                                    ks=[1, 100])
    lin, row["linear_s"] = timed(evaluate, "linear", embs["train"], embs["test"],
                                 epochs=args.linear_epochs)
    row.update({"knn_top1_k20": knn["k"][20]["top1"], "linear_top1": lin["top1"],
                "linear_weight_decay": lin["weight_decay"], "mAP": ret["mAP"],
                "P@100": ret["P@k"][100], "Recall@1": ret["Recall@k"][1],
                "dim": json.loads((Path(embs["train"]) / "meta.json").read_text())["dim"]})
    log.info("%s: %s", name, row)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", default="runs/fmnist", help="where runs and embeddings go")
    parser.add_argument("--model", default="hebb_softhebb_c3")
    parser.add_argument("--rule", default="softhebb")
    parser.add_argument("--linear-epochs", type=int, default=20)
    parser.add_argument("--out", default="tools/results/fashion_mnist.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = Path(args.work)
    rows = {"hebbian": run_variant(work, "hebbian", args.rule, args),
            "random": run_variant(work, "random", "none", args)}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    result = {"command": " ".join(["python"] + sys.argv), "git_commit": commit,
              "machine": platform.processor() or platform.machine(), "model": args.model,
              "protocol": "1 Hebbian epoch on the 60k train split; train = database / kNN train "
                          "set, test = queries; cosine; kNN T=0.07", "rows": rows}
    write_json(args.out, result)
    print(f"| {args.model} | rule | kNN top-1 (k=20) | linear top-1 | mAP | P@100 | Recall@1 |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['rule']} | {r['knn_top1_k20']:.2f} | {r['linear_top1']:.2f} | "
              f"{r['mAP']:.2f} | {r['P@100']:.2f} | {r['Recall@1']:.2f} |")


if __name__ == "__main__":
    main()
