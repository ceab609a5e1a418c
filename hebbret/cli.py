"""The `hebbret` command: parses arguments and calls the library; no logic of its own."""

from __future__ import annotations

import argparse
import logging
import sys

from .config import PretrainConfig, load_config


def _pretrain(args: argparse.Namespace) -> None:
    from .pretrain import pretrain

    cfg = load_config(PretrainConfig, args.config, section="pretrain", data=args.data,
                      model=args.model, rule=args.rule, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, mode=args.mode, device=args.device,
                      seed=args.seed, out=args.out, split=args.split, data_root=args.data_root,
                      in_chans=args.in_chans, img_size=args.img_size, num_workers=args.num_workers,
                      checkpoint_every=args.checkpoint_every, resume=args.resume or None,
                      quiet=args.quiet or None)
    print(pretrain(cfg))


def _show_filters(args: argparse.Namespace) -> None:
    from .viz import save_filters

    print(save_filters(args.run, args.out, args.scale))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hebbret", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="unsupervised Hebbian training of a backbone")
    p.add_argument("data", nargs="?", help="image folder, or a named dataset: fashion-mnist")
    p.add_argument("--model", help="backbone: hebb_softhebb_c3 (default) or hebb_fasthebb_6l")
    p.add_argument("--rule", choices=["hpca", "swta", "softhebb", "none"])
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, nargs="+", help="one value, or one per Hebbian layer")
    p.add_argument("--mode", choices=["consecutive", "greedy"])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int)
    p.add_argument("--out", help="run dir to write (default runs/pretrain)")
    p.add_argument("--config", help="TOML file of defaults (top level or a [pretrain] table)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--split", help="split of a named dataset (train/test)")
    p.add_argument("--data-root", help="folder with a named dataset's files")
    p.add_argument("--in-chans", type=int)
    p.add_argument("--img-size", type=int)
    p.add_argument("--num-workers", type=int)
    p.add_argument("--checkpoint-every", type=int, help="steps between resume checkpoints")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("show-filters", help="write the first layer's filters as a PNG grid")
    p.add_argument("run", help="run dir")
    p.add_argument("--out", help="PNG path (default RUN/filters.png)")
    p.add_argument("--scale", type=int, default=4, help="pixels per weight")
    p.set_defaults(func=_show_filters)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError,
            FloatingPointError) as e:
        logging.getLogger("hebbret").error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
