"""`hebbret embed`, `cache`, `export`: a frozen backbone's embeddings and extractor."""

from __future__ import annotations

import argparse

from ..config import DTYPES, EMBED_BATCH_SIZE, EXPORT_FORMATS, NAMED_DATASETS
from .common import dataset, descriptor, device, quiet


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", parents=[dataset("train"), descriptor(), device("auto"), quiet()],
                       help="embed every image of a folder/dataset with a frozen backbone")
    p.add_argument("run", help="run dir")
    p.add_argument("data", help="image folder, or a named dataset: " + ", ".join(NAMED_DATASETS))
    p.add_argument("--out", required=True, help="embeddings dir to write")
    p.add_argument("--batch-size", type=int, default=EMBED_BATCH_SIZE)
    p.add_argument("--dtype", choices=DTYPES, default=DTYPES[0])
    p.add_argument("--num-workers", type=int, default=0)
    p.set_defaults(func=embed)

    p = sub.add_parser("cache", parents=[quiet()], help="decode an image folder once into the "
                       "packed cache that pretrain, finetune, embed and run read (built on "
                       "first use otherwise)")
    p.add_argument("data", help="image folder")
    p.add_argument("--img-size", type=int, required=True, help="side the images are resized to")
    p.add_argument("--in-chans", type=int, choices=[1, 3], default=3)
    p.add_argument("--out", help="cache root (default $HEBBRET_CACHE_DIR or ~/.cache/hebbret); "
                   "the other commands look under $HEBBRET_CACHE_DIR")
    p.add_argument("--num-workers", type=int, help="decoding processes (default: all cores, "
                   "up to 8)")
    p.set_defaults(func=cache)

    p = sub.add_parser("export", parents=[descriptor()],
                       help="export the embedding extractor of a run")
    p.add_argument("run", help="run dir")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="pt2")
    p.add_argument("--out", help="file to write (default RUN/extractor.FORMAT)")
    p.set_defaults(func=export)


def embed(args: argparse.Namespace) -> None:
    from ..embed import extract_embeddings

    print(extract_embeddings(args.run, args.data, args.out, layer=args.layer, pool=args.pool,
                             gem_p=args.gem_p, grid=args.grid, project=not args.no_pca,
                             flip=args.flip, batch_size=args.batch_size, dtype=args.dtype, device=args.device,
                             split=args.split, data_root=args.data_root,
                             num_workers=args.num_workers, quiet=args.quiet))


def cache(args: argparse.Namespace) -> None:
    from ..data import ImageFolder, open_packed

    folder = ImageFolder(args.data, args.in_chans, args.img_size)
    ds = open_packed(folder, args.out, workers=args.num_workers, quiet=args.quiet)
    print(f"{ds.cache_dir}: {len(ds)} images at {args.img_size}×{args.img_size}×{args.in_chans}, "
          f"{ds.meta['skipped']} undecodable")


def export(args: argparse.Namespace) -> None:
    from ..export import export_extractor

    print(export_extractor(args.run, args.format, args.out, layer=args.layer, pool=args.pool,
                           gem_p=args.gem_p, grid=args.grid, project=not args.no_pca,
                           flip=args.flip))
