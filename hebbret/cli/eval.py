"""`hebbret eval knn|linear|retrieval` on embeddings dirs, and `hebbret fewshot` on a run."""

from __future__ import annotations

import argparse

from ..config import (
    DEFAULT_KS,
    KNN_TEMPERATURE,
    LINEAR_READOUTS,
    PROTOCOLS,
    RETRIEVAL_KS,
    FewShotConfig,
    FinetuneConfig,
)
from .common import budget, device, print_table, quiet


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="kNN, linear-probe or retrieval evaluation of embeddings")
    esub = p.add_subparsers(dest="kind", required=True)
    for kind in ("knn", "linear"):
        e = esub.add_parser(kind, help=f"{kind} evaluation: train embeddings vs test embeddings")
        e.add_argument("train", help="train embeddings dir")
        e.add_argument("test", help="test embeddings dir")
        e.add_argument("--out", help="results JSON to write")
        if kind == "knn":
            e.add_argument("--k", type=int, nargs="+", default=list(DEFAULT_KS),
                           help="default %(default)s")
            e.add_argument("--temperature", type=float, default=KNN_TEMPERATURE)
        else:
            e.add_argument("--readout", "--protocol", dest="readout", choices=LINEAR_READOUTS,
                           default=LINEAR_READOUTS[0],
                           help="logreg: L-BFGS logistic regression, L2 penalty chosen on a "
                                "validation split, standardised features; softhebb: SoftHebb's "
                                "readout (dropout 0.5, Adam 1e-3, step decay, raw features)")
            e.add_argument("--epochs", type=int, help="softhebb: readout epochs (default: the "
                           "paper's 50)")
            e.add_argument("--max-iter", type=int, default=100,
                           help="logreg: L-BFGS iterations per fit (default %(default)s)")
        e.set_defaults(func=evaluate)
    e = esub.add_parser("retrieval", help="mAP, mAP@k, P@k, Recall@k")
    e.add_argument("--database", required=True, help="database embeddings dir")
    e.add_argument("--queries", required=True, help="query embeddings dir")
    e.add_argument("--k", type=int, nargs="+", default=list(RETRIEVAL_KS),
                   help="default %(default)s")
    e.add_argument("--out", help="results JSON to write")
    e.set_defaults(func=evaluate)

    few = FewShotConfig(labels_per_class=1)
    tune = FinetuneConfig()
    p = sub.add_parser("fewshot", parents=[budget(required=True), device("auto"), quiet()],
                       help="few-label classification with every protocol: knn, linear, "
                       "propagate (the labels and the linear head's predictions diffused "
                       "over the kNN graph), full")
    p.add_argument("run", help="run dir of the backbone")
    p.add_argument("data", help="the collection: a labeled image folder (or fashion-mnist); "
                   "only the chosen few labels are used")
    p.add_argument("test_data", help="labeled test images (folder, or fashion-mnist with "
                   "--test-split test)")
    p.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    p.add_argument("--seeds", type=int, nargs="+", default=few.seeds,
                   help="one labeled subset per seed (default %(default)s)")
    p.add_argument("--k", type=int, default=few.knn_k,
                   help="neighbours of the kNN votes (default %(default)s)")
    p.add_argument("--graph-index", default=few.graph_index,
                   help="propagate: FAISS factory the kNN graph is searched with (e.g. "
                   "PCA256,Flat for very wide features; default %(default)s = exact)")
    p.add_argument("--epochs", type=int, help=f"full: fine-tuning epochs (default {tune.epochs})")
    p.add_argument("--lr", type=float, help=f"full: learning rate (default {tune.lr:g})")
    p.add_argument("--backbone-lr-scale", type=float, help="full: backbone lr = lr × this")
    p.add_argument("--out", required=True, help="folder for embeddings, runs and fewshot.json")
    p.add_argument("--split", default="train", help="split of a named dataset (collection)")
    p.add_argument("--test-split", default="test", help="split of a named test dataset")
    p.add_argument("--data-root", help="folder with a named dataset's files")
    p.set_defaults(func=fewshot)


def evaluate(args: argparse.Namespace) -> None:
    from ..eval.embeddings import evaluate

    if args.kind == "knn":
        result = evaluate("knn", args.train, args.test, args.out, ks=args.k,
                          temperature=args.temperature)
        print_table(["kNN", "top-1 %", "top-5 %"],
                    [(f"k={k}", f"{v['top1']:.2f}", f"{v['top5']:.2f}")
                     for k, v in result["k"].items()])
    elif args.kind == "linear" and args.readout == "softhebb":
        result = evaluate("softhebb", args.train, args.test, args.out,
                          **({"epochs": args.epochs} if args.epochs else {}))
        print_table(["SoftHebb readout", "top-1 %", "top-5 %"],
                    [("test", f"{result['top1']:.2f}", f"{result['top5']:.2f}")])
    elif args.kind == "linear":
        result = evaluate("linear", args.train, args.test, args.out, max_iter=args.max_iter)
        print_table(["linear probe", "top-1 %", "top-5 %", "L2 penalty"],
                    [("test", f"{result['top1']:.2f}", f"{result['top5']:.2f}",
                      f"{result['penalty']:g}")])
    else:
        result = evaluate("retrieval", args.database, args.queries, args.out, ks=args.k)
        print(f"mAP (whole database): {result['mAP']:.2f}")
        print_table(["retrieval", "mAP@k %", "P@k %", "Recall@k %"],
                    [(f"k={k}", f"{result['mAP@k'][k]:.2f}", f"{result['P@k'][k]:.2f}",
                      f"{result['Recall@k'][k]:.2f}") for k in result["P@k"]])
    if args.out:
        print(f"wrote {args.out}")


def fewshot(args: argparse.Namespace) -> None:
    from ..stages import run_fewshot

    cfg = FewShotConfig(protocols=args.protocols, labels_per_class=args.labels_per_class,
                        label_fraction=args.label_fraction, seeds=args.seeds, knn_k=args.k,
                        graph_index=args.graph_index)
    opts = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr),
                              ("backbone_lr_scale", args.backbone_lr_scale)) if v is not None}
    result = run_fewshot(args.run, args.data, args.test_data, args.out, cfg, split=args.split,
                         test_split=args.test_split, data_root=args.data_root,
                         finetune_options=opts, device=args.device, quiet=args.quiet)
    print_table(["protocol", "test top-1 % (mean)", "std", "seeds"],
                [(p, f"{r['top1']['mean']:.2f}", f"{r['top1']['std']:.2f}", str(r["top1"]["n"]))
                 for p, r in result["protocols"].items()])
    print(f"wrote {args.out}/fewshot.json")
