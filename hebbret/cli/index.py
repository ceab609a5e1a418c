"""`hebbret index build|update|info`, `search`, `serve`: FAISS indexes and queries against them."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..config import DEDUP_THRESHOLD, METRIC_NAMES, SEARCH_K, ServeConfig
from .common import device, search_params


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build or describe a FAISS index")
    isub = p.add_subparsers(dest="index_command", required=True)
    _add_build(isub)
    _add_update(isub)

    p = sub.add_parser("search", parents=[search_params(), device("auto")],
                       help="query an index by image or by embeddings")
    p.add_argument("index", help="index dir")
    p.add_argument("folder", nargs="?", help="a folder of query images: every one is searched "
                   "(embedded in batches), one JSON line per query into --out")
    p.add_argument("--out", help="with FOLDER: the results file (.jsonl)")
    q = p.add_mutually_exclusive_group()
    q.add_argument("--image", nargs="+", help="query image files")
    q.add_argument("--embeddings", help="query embeddings, a (Q, D) .npy file")
    p.add_argument("--k", type=int, default=SEARCH_K)
    p.add_argument("--run", help="run dir to embed images with (default: the one the index records)")
    p.add_argument("--path-prefix", help="search only rows whose path starts with this")
    p.add_argument("--label", help="search only rows of this label (number or class name)")
    p.add_argument("--rows", help="search only these rows: N,N,... or a text file of row numbers")
    p.add_argument("--dedup", type=float, nargs="?", const=DEDUP_THRESHOLD, metavar="T",
                   help="drop a hit more similar than T to a better one (default T "
                   f"{DEDUP_THRESHOLD})")
    p.add_argument("--json", action="store_true", help="machine-readable results")
    p.set_defaults(func=search)

    _dedup_parser(sub)

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
    p.add_argument("--token", default=os.environ.get("HEBBRET_TOKEN"),
                   help="required on every request (Bearer header, or open /?token=TOKEN once "
                   "in the browser); default: $HEBBRET_TOKEN. Needed for a non-loopback --host")
    p.add_argument("--public", action="store_true", help="serve a non-loopback --host without "
                   "a token (anyone who reaches it can search and see the images)")
    p.add_argument("--rate-limit", type=float, default=ServeConfig.rate_limit,
                   help="requests/s per client IP (default %(default)s; 0: no limit)")
    p.set_defaults(func=serve)


def _add_update(isub: argparse._SubParsersAction) -> None:
    """`index update` and `index info`."""
    b = isub.add_parser("update", parents=[device("auto")], help="bring an index up to date "
                        "with its image folder: embed new or changed files, drop deleted ones")
    b.add_argument("index", help="index dir")
    b.add_argument("folder", nargs="?", help="image folder (default: the one the index was "
                   "built from)")
    b.add_argument("--run", help="run dir to embed new files with (default: the one the index "
                   "records)")
    b.add_argument("--no-wait", action="store_true", help="fail at once if another update of "
                   "the index is running (default: wait for it)")
    b.set_defaults(func=update)
    b = isub.add_parser("info", help="print an index's meta")
    b.add_argument("index", help="index dir")
    b.set_defaults(func=info)


def _add_build(isub: argparse._SubParsersAction) -> None:
    b = isub.add_parser("build", parents=[search_params()],
                        help="build a FAISS index from an embeddings dir")
    b.add_argument("embeddings", help="embeddings dir")
    b.add_argument("--out", required=True, help="index dir to write, e.g. indexes/NAME")
    b.add_argument("--factory", help="any FAISS index_factory string (default Flat, or the "
                   "one chosen by --max-memory / --target-recall / --max-query-ms)")
    b.add_argument("--max-memory", help="choose the factory: the smallest index whose memory "
                   "for the whole collection fits SIZE (e.g. 2G), measured on a sample")
    b.add_argument("--target-recall", type=float, help="... reaching this recall@10 against "
                   "exact search (default 0.9 when choosing)")
    b.add_argument("--max-query-ms", type=float, help="... answering a query within this")
    b.add_argument("--metric", choices=METRIC_NAMES, default=METRIC_NAMES[0],
                   help="ip: inner product on L2-normalised vectors (cosine)")
    b.add_argument("--on-disk", action="store_true", help="IVF factories: add the vectors "
                   "shard by shard and keep the inverted lists in index.ivfdata, memory-mapped "
                   "by search (collections larger than RAM)")
    b.add_argument("--shard-rows", type=int, default=262_144,
                   help="--on-disk: vectors added per block (default %(default)s)")
    b.set_defaults(func=build)


def _dedup_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dedup", help="groups of near-duplicate images in an index")
    p.add_argument("index", help="index dir (metric ip)")
    p.add_argument("--threshold", type=float, default=DEDUP_THRESHOLD, help="similarity above "
                   "which two images are near-duplicates (default %(default)s)")
    p.add_argument("--out", help="write the groups here as JSON (default: print a summary)")
    p.set_defaults(func=dedup)


def build(args: argparse.Namespace) -> None:
    from ..index import build_index

    common = dict(metric=args.metric, on_disk=args.on_disk, shard_rows=args.shard_rows)
    if args.max_memory or args.target_recall is not None or args.max_query_ms is not None:
        from ..budget import build_for_budget, parse_size

        if args.factory or args.nprobe:
            raise ValueError("--factory/--nprobe and a budget (--max-memory, --target-recall, "
                             "--max-query-ms) exclude each other: the budget chooses them")
        print(build_for_budget(args.embeddings, args.out, args.max_memory and parse_size(
            args.max_memory), 0.9 if args.target_recall is None else args.target_recall,
            args.max_query_ms, **common))
        return
    print(build_index(args.embeddings, args.out, factory=args.factory or "Flat",
                      nprobe=args.nprobe, ef_search=args.ef_search, **common))


def update(args: argparse.Namespace) -> None:
    from ..update import update_index

    s = update_index(args.index, args.folder, run=args.run, device=args.device,
                     wait=not args.no_wait)
    print(f"{s['index']}: generation {s['generation']}, {s['count']} rows ({s['added']} added, "
          f"{s['removed']} removed, {s['skipped_files']} files skipped as undecodable)")
    if s["rebuild_advised"]:
        print(f"{s['rows_added_since_training']} rows were added after the index was trained: "
              f"rebuild it (`hebbret index build`) for its clustering to fit the collection")


def info(args: argparse.Namespace) -> None:
    from ..index import index_info

    print(json.dumps(index_info(args.index), indent=2))


def search(args: argparse.Namespace) -> None:
    import numpy as np

    from ..index import load_index
    from ..search import format_results, search_by_image, search_folder, search_rows, select_rows

    rows = None
    if args.path_prefix is not None or args.label is not None or args.rows is not None:
        rows = select_rows(load_index(args.index)[1], args.path_prefix, args.label,
                           _rows(args.rows))
    if bool(args.folder) + bool(args.image) + bool(args.embeddings) != 1 or (
            bool(args.folder) != bool(args.out)):
        raise ValueError("search needs one of: FOLDER --out FILE.jsonl, --image FILE..., "
                         "--embeddings FILE.npy")
    if args.folder:
        counts = search_folder(args.index, args.folder, args.out, args.k, run=args.run,
                               nprobe=args.nprobe, ef_search=args.ef_search, device=args.device,
                               rows=rows, dedup=args.dedup)
        print(f"{counts['queries']} queries searched, {counts['errors']} unreadable -> {args.out}")
        return
    if args.image:
        found = search_by_image(args.index, args.image, args.k, run=args.run, nprobe=args.nprobe,
                                ef_search=args.ef_search, device=args.device, rows=rows,
                                dedup=args.dedup)
    else:
        queries = np.load(args.embeddings, mmap_mode="r")
        names = [f"{args.embeddings}[{i}]" for i in range(len(queries))]
        found = format_results(search_rows(load_index(args.index), queries, args.k, args.nprobe,
                                           args.ef_search, args.index, rows, args.dedup), names)
    if args.json:
        print(json.dumps(found, indent=2))
        return
    for q in found:
        print(f"query {q['query']}")
        print(f"{'rank':>4}  {'score':>7}  {'label':<16} path")
        for r in q["results"]:
            label = r.get("class_name") or r.get("label")
            print(f"{r['rank']:>4}  {r['score']:>7.4f}  {label!s:<16} {r['path']}")


def dedup(args: argparse.Namespace) -> None:
    from .._io import write_json
    from ..dedup import near_duplicates

    found = near_duplicates(args.index, args.threshold)
    if args.out:
        write_json(args.out, found)
    groups = found["groups"]
    print(f"{len(groups)} groups of near-duplicates ({sum(len(g['rows']) for g in groups)} of "
          f"{found['rows']} images, similarity > {found['threshold']})"
          + (f" -> {args.out}" if args.out else ""))
    for g in groups[: 0 if args.out else 20]:
        print("  " + "  ".join(str(p) for p in g["paths"]))


def _rows(spec: str | None) -> list[int] | None:
    """--rows: N,N,... or a file of row numbers (whitespace or commas)."""
    if spec is None:
        return None
    text = Path(spec).read_text() if os.path.isfile(spec) else spec
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"--rows {spec!r}: expected row numbers N,N,... or a file of "
                         f"them") from None


def serve(args: argparse.Namespace) -> None:
    from ..serve import serve

    serve(ServeConfig(index=args.index, run=args.run, host=args.host, port=args.port, k=args.k,
                      max_upload_mb=args.max_upload_mb, device=args.device, token=args.token,
                      public=args.public, rate_limit=args.rate_limit,
                      rate_burst=max(ServeConfig.rate_burst, int(2 * args.rate_limit))))
