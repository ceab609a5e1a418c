"""Hebbian vs random-init features of a backbone on Fashion-MNIST: kNN, linear probe, retrieval.

Runs the library's stages (:class:`hebbret.stages.BackboneStages`: pretrain -> embed -> eval)
for the Hebbian rule and for rule ``none`` (random weights; BatchNorm statistics still
calibrated by one pass), train split as database and test split as queries, and writes
``tools/results/fashion_mnist.json`` plus a markdown table. Finished stages are reused, so a
killed run picks up where it stopped.

    python tools/eval_fashion_mnist.py --work runs/fmnist
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from _common.results import markdown_table, provenance
from hebbret._io import write_json
from hebbret.stages import BackboneStages

log = logging.getLogger("eval_fashion_mnist")
REPO = Path(__file__).resolve().parent.parent


def run_variant(work: Path, name: str, rule: str, args: argparse.Namespace) -> dict:
    stages = BackboneStages(work / name, run_name="run", quiet=True)
    stages.pretrain("fashion-mnist", model=args.model, rule=rule)
    for split in ("train", "test"):
        stages.embed(split, "fashion-mnist", split=split)
    row = {"rule": rule, **stages.all_label_scores(knn_k=20, retrieval_k=100,
                                                   linear_max_iter=args.linear_max_iter),
           "seconds": stages.seconds}
    log.info("%s: %s", name, row)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", default="runs/fmnist", help="where runs and embeddings go")
    parser.add_argument("--model", default="hebb_softhebb_c3")
    parser.add_argument("--rule", default="softhebb")
    parser.add_argument("--linear-max-iter", type=int, default=100)
    parser.add_argument("--out", default="tools/results/fashion_mnist.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = Path(args.work)
    rows = {"hebbian": run_variant(work, "hebbian", args.rule, args),
            "random": run_variant(work, "random", "none", args)}
    result = {**provenance(["python", *sys.argv], REPO), "model": args.model,
              "protocol": "1 Hebbian epoch on the 60k train split; train = database / kNN train "
                          "set, test = queries; cosine; kNN T=0.07", "rows": rows}
    write_json(args.out, result)
    sys.stdout.write(markdown_table(
        [args.model, "rule", "kNN top-1 (k=20)", "linear top-1", "mAP", "P@100", "Recall@1"],
        [[name, r["rule"], r["knn_top1"], r["linear_top1"], r["mAP"], r["P@100"], r["Recall@1"]]
         for name, r in rows.items()]))


if __name__ == "__main__":
    main()
