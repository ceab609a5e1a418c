"""The `hebbret` command: parses arguments and calls the library; no logic of its own."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from .config import PRECISIONS, TRAINING_MODES, PretrainConfig, load_config
from .data import NAMED_DATASETS
from .embed import DTYPES, EMBED_BATCH_SIZE, POOLS
from .eval.embeddings import LINEAR_PROTOCOLS
from .eval.fewshot import PROTOCOLS, FewShotConfig
from .eval.knn import DEFAULT_KS, KNN_TEMPERATURE
from .eval.retrieval import RETRIEVAL_KS
from .export import EXPORT_FORMATS
from .finetuning import FINETUNE_MODES
from .hebb.rules import RULES
from .index import METRICS
from .models import MODEL_NAMES
from .runtime import DEVICES
from .serve import ServeConfig
from .version import __version__


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"init_radius\": 5}'")
    return value


def _pretrain(args: argparse.Namespace) -> None:
    from .pretraining import pretrain

    cfg = load_config(PretrainConfig, args.config, section="pretrain", data=args.data,
                      model=args.model, rule=args.rule, epochs=args.epochs, steps=args.steps,
                      batch_size=args.batch_size, lr=args.lr, mode=args.mode, device=args.device,
                      seed=args.seed, out=args.out, split=args.split, data_root=args.data_root,
                      in_chans=args.in_chans, img_size=args.img_size, num_workers=args.num_workers,
                      checkpoint_every=args.checkpoint_every, precision=args.precision,
                      model_kwargs=args.model_kwargs, descriptor_dims=args.descriptor_dims,
                      resume=args.resume or None,
                      quiet=args.quiet or None)
    print(pretrain(cfg))


def _show_filters(args: argparse.Namespace) -> None:
    from .viz import save_filters

    print(save_filters(args.run, args.out, args.scale))


def _embed(args: argparse.Namespace) -> None:
    from .embed import extract_embeddings

    print(extract_embeddings(args.run, args.data, args.out, layer=args.layer, pool=args.pool,
                             gem_p=args.gem_p, grid=args.grid, project=not args.no_pca,
                             batch_size=args.batch_size,
                             dtype=args.dtype,
                             device=args.device, split=args.split, data_root=args.data_root,
                             num_workers=args.num_workers, quiet=args.quiet))


def _cache(args: argparse.Namespace) -> None:
    from .data import ImageFolder, open_packed

    folder = ImageFolder(args.data, args.in_chans, args.img_size)
    ds = open_packed(folder, args.out, workers=args.num_workers, quiet=args.quiet)
    print(f"{ds.cache_dir}: {len(ds)} images at {args.img_size}×{args.img_size}×{args.in_chans}, "
          f"{ds.meta['skipped']} undecodable")


def _index_build(args: argparse.Namespace) -> None:
    from .index import build_index

    print(build_index(args.embeddings, args.out, factory=args.factory, metric=args.metric,
                      nprobe=args.nprobe, ef_search=args.ef_search, on_disk=args.on_disk,
                      shard_rows=args.shard_rows))


def _index_info(args: argparse.Namespace) -> None:
    from .index import index_info

    print(json.dumps(index_info(args.index), indent=2))


def _search(args: argparse.Namespace) -> None:
    import numpy as np

    from .index import search_index
    from .search import format_results, search_by_image

    if args.image:
        found = search_by_image(args.index, args.image, args.k, run=args.run, nprobe=args.nprobe,
                                ef_search=args.ef_search, device=args.device)
    else:
        queries = np.load(args.embeddings, mmap_mode="r")
        names = [f"{args.embeddings}[{i}]" for i in range(len(queries))]
        found = format_results(search_index(args.index, queries, args.k, args.nprobe,
                                            args.ef_search), names)
    if args.json:
        print(json.dumps(found, indent=2))
        return
    for q in found:
        print(f"query {q['query']}")
        print(f"{'rank':>4}  {'score':>7}  {'label':<16} path")
        for r in q["results"]:
            label = r.get("class_name") or r.get("label")
            print(f"{r['rank']:>4}  {r['score']:>7.4f}  {label!s:<16} {r['path']}")


def _eval(args: argparse.Namespace) -> None:
    from .eval.embeddings import evaluate

    if args.kind == "knn":
        opts = {"ks": args.k, "temperature": args.temperature}
        result = evaluate("knn", args.train, args.test, args.out, **opts)
        rows = [(f"k={k}", f"{v['top1']:.2f}", f"{v['top5']:.2f}") for k, v in result["k"].items()]
        _print_table(["kNN", "top-1 %", "top-5 %"], rows)
    elif args.kind == "linear" and args.protocol == "softhebb":
        result = evaluate("softhebb", args.train, args.test, args.out, epochs=args.epochs or 50)
        _print_table(["SoftHebb readout", "top-1 %", "top-5 %"],
                     [("test", f"{result['top1']:.2f}", f"{result['top5']:.2f}")])
    elif args.kind == "linear":
        result = evaluate("linear", args.train, args.test, args.out, max_iter=args.max_iter)
        _print_table(["linear probe", "top-1 %", "top-5 %", "L2 penalty"],
                     [("test", f"{result['top1']:.2f}", f"{result['top5']:.2f}",
                       f"{result['penalty']:g}")])
    else:
        result = evaluate("retrieval", args.database, args.queries, args.out,
                          ks=args.k)
        rows = [(f"k={k}", f"{result['mAP@k'][k]:.2f}", f"{result['P@k'][k]:.2f}",
                 f"{result['Recall@k'][k]:.2f}") for k in result["P@k"]]
        print(f"mAP (whole database): {result['mAP']:.2f}")
        _print_table(["retrieval", "mAP@k %", "P@k %", "Recall@k %"], rows)
    if args.out:
        print(f"wrote {args.out}")


def _print_table(header: list[str], rows: list[tuple]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


def _export(args: argparse.Namespace) -> None:
    from .export import export_extractor

    print(export_extractor(args.run, args.format, args.out, layer=args.layer, pool=args.pool,
                           gem_p=args.gem_p, grid=args.grid, project=not args.no_pca))


def _finetune(args: argparse.Namespace) -> None:
    from .finetuning import FinetuneConfig, finetune

    cfg = load_config(FinetuneConfig, args.config, section="finetune", run=args.run,
                      data=args.data, labels_per_class=args.labels_per_class,
                      label_fraction=args.label_fraction, mode=args.mode, epochs=args.epochs,
                      lr=args.lr, batch_size=args.batch_size, augment=args.augment or None,
                      from_scratch=args.from_scratch or None, out=args.out, split=args.split,
                      data_root=args.data_root, device=args.device, seed=args.seed,
                      quiet=args.quiet or None)
    print(finetune(cfg))


def _fewshot(args: argparse.Namespace) -> None:
    from .stages import run_fewshot

    cfg = FewShotConfig(protocols=args.protocols, labels_per_class=args.labels_per_class,
                        label_fraction=args.label_fraction, seeds=args.seeds, knn_k=args.k,
                        graph_index=args.graph_index)
    opts = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr),
                              ("backbone_lr_scale", args.backbone_lr_scale)) if v is not None}
    result = run_fewshot(args.run, args.data, args.test_data, args.out, cfg, split=args.split,
                         test_split=args.test_split, data_root=args.data_root,
                         finetune_options=opts, device=args.device, quiet=args.quiet)
    rows = [(p, f"{r['top1']['mean']:.2f}", f"{r['top1']['std']:.2f}", str(r["top1"]["n"]))
            for p, r in result["protocols"].items()]
    _print_table(["protocol", "test top-1 % (mean)", "std", "seeds"], rows)
    print(f"wrote {args.out}/fewshot.json")


def _serve(args: argparse.Namespace) -> None:
    from .serve import serve

    serve(ServeConfig(index=args.index, run=args.run, host=args.host, port=args.port, k=args.k,
                      max_upload_mb=args.max_upload_mb, device=args.device))


def _run(args: argparse.Namespace) -> None:
    from .pipeline import load_run_config, run_pipeline
    from .report import results_table

    target, config = args.target, args.config
    data = None
    if target is not None and Path(target).is_dir():
        data = target  # `hebbret run FOLDER`
    elif target is not None:
        if config is not None:
            raise ValueError(f"{target} is not a folder; give a folder, or one config (--config "
                             f"{config} already names one)")
        config = target
    cfg = load_run_config(config, data=data, data_root=args.data_root, out=args.out,
                          device=args.device, img_size=args.img_size, in_chans=args.in_chans,
                          model=args.model, pool=args.pool, layer=args.layer,
                          descriptor_dims=args.descriptor_dims, quiet=args.quiet or None)
    results = run_pipeline(cfg)
    print(results_table(results))
    print(f"report: {cfg.out}/report/")


def _parent(*options: tuple[tuple[str, ...], dict[str, Any]]) -> argparse.ArgumentParser:
    """A parent parser holding options several commands share (dinov2's habit)."""
    parent = argparse.ArgumentParser(add_help=False)
    for flags, kwargs in options:
        parent.add_argument(*flags, **kwargs)
    return parent


def build_parser() -> argparse.ArgumentParser:
    """Every choice and default comes from the library's own constants and configs."""
    pretrain_defaults, few_defaults = PretrainConfig(), FewShotConfig(labels_per_class=1)
    def device(default: str | None = None) -> argparse.ArgumentParser:  # own parser per default:
        return _parent((("--device",), dict(  # argparse shares a parent's actions
            choices=DEVICES, default=default, help="auto: CUDA when torch sees it, else cpu")))

    quiet = _parent((("--quiet",), dict(action="store_true", help="no progress output")))
    def dataset(split: str | None = None) -> argparse.ArgumentParser:
        return _parent((("--split",), dict(default=split, help="split of a named dataset "
                                           "(train/test)")),
                       (("--data-root",), dict(help="folder with a named dataset's files")))

    image = _parent((("--in-chans",), dict(type=int, choices=[1, 3], help="default: 1 if the "
                                           "folder is grayscale, else 3")),
                    (("--img-size",), dict(type=int, help="side images are resized to "
                                           "(default: the folder's own when square and ≤ 64; "
                                           "else `run` chooses from the images' median short "
                                           "side, `pretrain` takes the backbone's)")))
    def budget(required: bool = False) -> argparse.ArgumentParser:
        parent = argparse.ArgumentParser(add_help=False)
        few = parent.add_mutually_exclusive_group(required=required)
        few.add_argument("--labels-per-class", type=int)
        few.add_argument("--label-fraction", type=float)
        return parent

    parser = argparse.ArgumentParser(prog="hebbret", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"hebbret {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "run", parents=[image, device(), quiet],
        help="the main job: pretrain, fine-tune, embed, index, evaluate",
        usage="hebbret run [FOLDER | CONFIG] [options]",
        description="hebbret run FOLDER: FOLDER holds train/ and test/ class folders, or one "
        "labeled folder (ROOT/<class>/<image>) that is split 80/20 per class (seeded; the report "
        "says so). hebbret run CONFIG: a shipped config (default, fashion-mnist, cifar10) or a "
        "TOML file. Nothing: the embedded default (a Fashion-MNIST subset shipped inside "
        "hebbret).")
    p.add_argument("target", nargs="?", metavar="FOLDER | CONFIG",
                   help="your image folder, or a config; none: the embedded default")
    p.add_argument("--config", help="a config for the other settings of a FOLDER run")
    p.add_argument("--data-root", help="files of a named dataset (fashion-mnist idx files), or "
                   "a config's data folder (cifar10: DIR with train/ and test/)")
    p.add_argument("--out", help="output folder (report in OUT/report)")
    p.add_argument("--model", choices=MODEL_NAMES, help="backbone (default: the SoftHebb net "
                   "that fits the input size)")
    p.add_argument("--pool", choices=POOLS, help="descriptor pooling (default: the backbone's)")
    p.add_argument("--layer", help="descriptor layer(s): features or block<i>, several joined "
                   "by '+' (default: the backbone's)")
    descriptor_dims = dict(type=int, help="dimensions of the embedding's PCA, fitted on the "
                           "training images after pretraining (default 1024; 0: none)")
    p.add_argument("--descriptor-dims", **descriptor_dims)
    p.set_defaults(func=_run)

    p = sub.add_parser("pretrain", parents=[dataset(), image, device(), quiet],
                       help="unsupervised Hebbian training of a backbone")
    p.add_argument("data", nargs="?", help="image folder, or a named dataset: "
                   + ", ".join(NAMED_DATASETS))
    p.add_argument("--model", choices=MODEL_NAMES, help=f"backbone (default "
                   f"{pretrain_defaults.model})")
    p.add_argument("--rule", choices=sorted(RULES), help="default: the backbone's own")
    p.add_argument("--epochs", type=int, help="passes over the data (default: the backbone's, "
                   "repeated up to its minimum step budget on small collections)")
    p.add_argument("--steps", type=int, help="Hebbian steps per layer phase (instead of --epochs)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, nargs="+", help="one value, or one per Hebbian layer")
    p.add_argument("--model-kwargs", type=_json_object, metavar="JSON",
                   help='backbone arguments, e.g. \'{"init_radius": 5}\' (small folders)')
    p.add_argument("--mode", choices=TRAINING_MODES)
    p.add_argument("--seed", type=int)
    p.add_argument("--out", help=f"run dir to write (default {pretrain_defaults.out})")
    p.add_argument("--config", help="TOML file of defaults (top level or a [pretrain] table)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--num-workers", type=int)
    p.add_argument("--checkpoint-every", type=int, help="steps between resume checkpoints")
    p.add_argument("--precision", choices=list(PRECISIONS),
                   help="bf16: forward and Yᵀ X under bfloat16 autocast, weights stay fp32")
    p.add_argument("--descriptor-dims", **descriptor_dims)
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("show-filters", help="write the first layer's filters as a PNG grid")
    p.add_argument("run", help="run dir")
    p.add_argument("--out", help="PNG path (default RUN/filters.png)")
    p.add_argument("--scale", type=int, default=4, help="pixels per weight")
    p.set_defaults(func=_show_filters)

    p = sub.add_parser("finetune", parents=[budget(), dataset(), device(), quiet],
                       help="supervised fine-tuning on (few) labels")
    p.add_argument("run", help="parent run dir")
    p.add_argument("data", nargs="?", help="labeled image folder, or fashion-mnist")
    p.add_argument("--mode", choices=FINETUNE_MODES)
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--augment", action="store_true")
    p.add_argument("--from-scratch", action="store_true",
                   help="same architecture from random weights: the baseline")
    p.add_argument("--out", help="run dir to write (default runs/finetune)")
    p.add_argument("--config", help="TOML file of defaults (top level or a [finetune] table)")
    p.add_argument("--seed", type=int)
    p.set_defaults(func=_finetune)

    p = sub.add_parser("fewshot", parents=[budget(required=True), device("auto"), quiet],
                       help="few-label classification with every protocol: knn, linear, "
                       "propagate (the labels and the linear head's predictions diffused "
                       "over the kNN graph), full")
    p.add_argument("run", help="run dir of the backbone")
    p.add_argument("data", help="the collection: a labeled image folder (or fashion-mnist); "
                   "only the chosen few labels are used")
    p.add_argument("test_data", help="labeled test images (folder, or fashion-mnist with "
                   "--test-split test)")
    p.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    p.add_argument("--seeds", type=int, nargs="+", default=few_defaults.seeds,
                   help="one labeled subset per seed (default %(default)s)")
    p.add_argument("--k", type=int, default=few_defaults.knn_k,
                   help="neighbours of the kNN votes (default %(default)s)")
    p.add_argument("--graph-index", default=few_defaults.graph_index,
                   help="propagate: FAISS factory the kNN graph is searched with (e.g. "
                   "PCA256,Flat for very wide features; default %(default)s = exact)")
    p.add_argument("--epochs", type=int, help="full: fine-tuning epochs (default 20)")
    p.add_argument("--lr", type=float, help="full: learning rate (default 1e-3)")
    p.add_argument("--backbone-lr-scale", type=float, help="full: backbone lr = lr × this")
    p.add_argument("--out", required=True, help="folder for embeddings, runs and fewshot.json")
    p.add_argument("--split", default="train", help="split of a named dataset (collection)")
    p.add_argument("--test-split", default="test", help="split of a named test dataset")
    p.add_argument("--data-root", help="folder with a named dataset's files")
    p.set_defaults(func=_fewshot)

    p = sub.add_parser("embed", parents=[dataset("train"), device("auto"), quiet],
                       help="embed every image of a folder/dataset with a frozen backbone")
    p.add_argument("run", help="run dir")
    p.add_argument("data", help="image folder, or a named dataset: " + ", ".join(NAMED_DATASETS))
    p.add_argument("--out", required=True, help="embeddings dir to write")
    p.add_argument("--layer", help="features or block<i>, several joined by '+' (default: the "
                   "model card's)")
    p.add_argument("--pool", choices=POOLS, help="default: the model card's")
    p.add_argument("--gem-p", type=float, help="GeM's exponent (default: the model card's)")
    p.add_argument("--grid", type=int, help="pool each cell of a grid×grid partition of the map "
                   "(default: the model card's)")
    p.add_argument("--no-pca", action="store_true",
                   help="the pooled descriptor without the backbone's fitted PCA")
    p.add_argument("--batch-size", type=int, default=EMBED_BATCH_SIZE)
    p.add_argument("--dtype", choices=DTYPES, default=DTYPES[0])
    p.add_argument("--num-workers", type=int, default=0)
    p.set_defaults(func=_embed)

    p = sub.add_parser("cache", parents=[quiet], help="decode an image folder once into the "
                       "packed cache that pretrain, finetune, embed and run read (built on "
                       "first use otherwise)")
    p.add_argument("data", help="image folder")
    p.add_argument("--img-size", type=int, required=True, help="side the images are resized to")
    p.add_argument("--in-chans", type=int, choices=[1, 3], default=3)
    p.add_argument("--out", help="cache root (default $HEBBRET_CACHE_DIR or ~/.cache/hebbret); "
                   "the other commands look under $HEBBRET_CACHE_DIR")
    p.add_argument("--num-workers", type=int, help="decoding processes (default: all cores, "
                   "up to 8)")
    p.set_defaults(func=_cache)

    search_params = _parent((("--nprobe",), dict(type=int, help="IVF lists visited per query")),
                            (("--ef-search",), dict(type=int, help="HNSW search depth")))
    p = sub.add_parser("index", help="build or describe a FAISS index")
    isub = p.add_subparsers(dest="index_command", required=True)
    b = isub.add_parser("build", parents=[search_params],
                        help="build a FAISS index from an embeddings dir")
    b.add_argument("embeddings", help="embeddings dir")
    b.add_argument("--out", required=True, help="index dir to write, e.g. indexes/NAME")
    b.add_argument("--factory", default="Flat", help="any FAISS index_factory string")
    b.add_argument("--metric", choices=list(METRICS), default="ip",
                   help="ip: inner product on L2-normalised vectors (cosine)")
    b.add_argument("--on-disk", action="store_true", help="IVF factories: add the vectors "
                   "shard by shard and keep the inverted lists in index.ivfdata, memory-mapped "
                   "by search (collections larger than RAM)")
    b.add_argument("--shard-rows", type=int, default=262_144,
                   help="--on-disk: vectors added per block (default %(default)s)")
    b.set_defaults(func=_index_build)
    b = isub.add_parser("info", help="print an index's meta")
    b.add_argument("index", help="index dir")
    b.set_defaults(func=_index_info)

    p = sub.add_parser("search", parents=[search_params, device("auto")],
                       help="query an index by image or by embeddings")
    p.add_argument("index", help="index dir")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--image", nargs="+", help="query image files")
    q.add_argument("--embeddings", help="query embeddings, a (Q, D) .npy file")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--run", help="run dir to embed images with (default: the one the index records)")
    p.add_argument("--json", action="store_true", help="machine-readable results")
    p.set_defaults(func=_search)

    p = sub.add_parser("serve", parents=[device("auto")], help="search an index by image in the "
                       "browser, with a JSON API (http://HOST:PORT/)")
    p.add_argument("index", help="index dir")
    p.add_argument("--host", default=ServeConfig.host, help="address to listen on (default "
                   "%(default)s: this machine only)")
    p.add_argument("--port", type=int, default=ServeConfig.port)
    p.add_argument("--run", help="run dir to embed uploads with (default: the one the index "
                   "records)")
    p.add_argument("--k", type=int, default=ServeConfig.k, help="default number of results")
    p.add_argument("--max-upload-mb", type=float, default=ServeConfig.max_upload_mb)
    p.set_defaults(func=_serve)

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
            e.add_argument("--protocol", choices=LINEAR_PROTOCOLS, default=LINEAR_PROTOCOLS[0],
                           help="logreg: L-BFGS logistic regression, L2 penalty chosen on a "
                                "validation split, standardised features; softhebb: SoftHebb's "
                                "readout (dropout 0.5, Adam 1e-3, step decay, raw features)")
            e.add_argument("--epochs", type=int, help="softhebb: readout epochs (default 50)")
            e.add_argument("--max-iter", type=int, default=100,
                           help="logreg: L-BFGS iterations per fit (default 100)")
        e.set_defaults(func=_eval)
    e = esub.add_parser("retrieval", help="mAP, mAP@k, P@k, Recall@k")
    e.add_argument("--database", required=True, help="database embeddings dir")
    e.add_argument("--queries", required=True, help="query embeddings dir")
    e.add_argument("--k", type=int, nargs="+", default=list(RETRIEVAL_KS),
                   help="default %(default)s")
    e.add_argument("--out", help="results JSON to write")
    e.set_defaults(func=_eval)

    p = sub.add_parser("export", help="export the embedding extractor of a run")
    p.add_argument("run", help="run dir")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="pt2")
    p.add_argument("--out", help="file to write (default RUN/extractor.FORMAT)")
    p.add_argument("--layer")
    p.add_argument("--pool", choices=POOLS)
    p.add_argument("--gem-p", type=float)
    p.add_argument("--grid", type=int)
    p.add_argument("--no-pca", action="store_true")
    p.set_defaults(func=_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss").setLevel(logging.WARNING)
    try:
        args.func(args)
    except (ValueError, FloatingPointError) as e:
        logging.getLogger("hebbret").error("%s", e)
        return 2
    except OSError as e:  # missing paths, permissions, a full disk: the path is in the message
        logging.getLogger("hebbret").error("%s", e if e.filename or not e.strerror else
                                           f"{e.strerror}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
