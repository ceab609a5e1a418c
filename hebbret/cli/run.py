"""`hebbret run`: the main job."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import BASELINES, MODEL_NAMES, POOLS
from .common import DESCRIPTOR_DIMS, FLIP_CHOICE, device, image, quiet


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", parents=[image(), device(), quiet()],
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
    p.add_argument("--descriptor-dims", **DESCRIPTOR_DIMS)
    p.add_argument("--flip", **{**FLIP_CHOICE, "help": FLIP_CHOICE["help"] + " (default auto, "
                                "for each backbone)"})
    p.add_argument("--baselines", nargs="+", choices=BASELINES, help="more rows for the report: "
                   "ssl = the same net trained by self-supervised backprop (BYOL, lightly) for "
                   "the Hebbian pretraining's wall clock; needs pip install 'hebbret[ssl]'")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..config import load_run_config
    from ..pipeline import run_pipeline
    from ..report import results_table

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
                          descriptor_dims=args.descriptor_dims, flip=args.flip, baselines=args.baselines,
                          quiet=args.quiet or None)
    print(results_table(run_pipeline(cfg)))
    print(f"report: {cfg.out}/report/")
