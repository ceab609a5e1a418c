"""`hebbret pretrain`, `finetune`, `show-filters`: training a backbone."""

from __future__ import annotations

import argparse

from ..config import (
    BACKPROP_MODEL_NAMES,
    COMPILE_CHOICES,
    FINETUNE_MODES,
    MODEL_NAMES,
    NAMED_DATASETS,
    PRECISIONS,
    RULE_NAMES,
    SSL_METHODS,
    TRAINING_MODES,
    FinetuneConfig,
    PretrainConfig,
    SSLConfig,
    load_config,
)
from .common import DESCRIPTOR_DIMS, FLIP_CHOICE, budget, dataset, device, image, json_object, quiet


def add_parser(sub: argparse._SubParsersAction) -> None:
    defaults = PretrainConfig()
    p = sub.add_parser("pretrain", parents=[dataset(), image(), device(), quiet()],
                       help="unsupervised Hebbian training of a backbone")
    p.add_argument("data", nargs="?", help="image folder, or a named dataset: "
                   + ", ".join(NAMED_DATASETS))
    p.add_argument("--model", choices=MODEL_NAMES, help=f"backbone (default {defaults.model})")
    p.add_argument("--rule", choices=RULE_NAMES, help="default: the backbone's own")
    p.add_argument("--epochs", type=int, help="passes over the data (default: the backbone's, "
                   "repeated up to its minimum step budget on small collections)")
    p.add_argument("--steps", type=int, help="Hebbian steps per layer phase (instead of --epochs)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, nargs="+", help="one value, or one per Hebbian layer")
    p.add_argument("--model-kwargs", type=json_object, metavar="JSON",
                   help='backbone arguments, e.g. \'{"init_radius": 5}\' (small folders)')
    p.add_argument("--mode", choices=TRAINING_MODES)
    p.add_argument("--seed", type=int)
    p.add_argument("--out", help=f"run dir to write (default {defaults.out})")
    p.add_argument("--config", help="TOML file of defaults (top level or a [pretrain] table)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--num-workers", type=int)
    p.add_argument("--checkpoint-every", type=int, help="steps between resume checkpoints")
    p.add_argument("--budget-s", type=float, metavar="S", help="also stop after S seconds of "
                   "training (loading included) and save a complete run, as `hebbret ssl` does")
    p.add_argument("--precision", choices=list(PRECISIONS),
                   help="bf16: forward and Yᵀ X under bfloat16 autocast, weights stay fp32")
    p.add_argument("--compile", choices=COMPILE_CHOICES, help="torch.compile the Hebbian step "
                   "(default auto: on the CPU for runs of ≥ 2000 steps; eager if it fails)")
    p.add_argument("--descriptor-dims", **DESCRIPTOR_DIMS)
    p.add_argument("--flip", **{**FLIP_CHOICE, "help": FLIP_CHOICE["help"] + " (default: the "
                                "backbone's own)"})
    p.add_argument("--embeddings-out", metavar="DIR", help="also write the training images' "
                   "embeddings dir (as `hebbret embed` would) from the descriptor PCA's sample, "
                   "when it holds all of them (at most 10,000 images and 1 GiB of descriptors)")
    p.set_defaults(func=pretrain)

    p = sub.add_parser("show-filters", help="write the first layer's filters as a PNG grid")
    p.add_argument("run", help="run dir")
    p.add_argument("--out", help="PNG path (default RUN/filters.png)")
    p.add_argument("--scale", type=int, default=4, help="pixels per weight")
    p.set_defaults(func=show_filters)

    p = sub.add_parser("finetune", parents=[budget(), dataset(), device(), quiet()],
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
    p.add_argument("--out", help=f"run dir to write (default {FinetuneConfig.out})")
    p.add_argument("--config", help="TOML file of defaults (top level or a [finetune] table)")
    p.add_argument("--seed", type=int)
    p.set_defaults(func=finetune)
    add_ssl_parser(sub)


def add_ssl_parser(sub: argparse._SubParsersAction) -> None:
    ssl = SSLConfig()
    p = sub.add_parser("ssl", parents=[device(), quiet()],
                       help="a self-supervised backprop baseline (SimCLR or BYOL, lightly) of the same "
                       "backbone for a wall-clock budget; needs pip install 'hebbret[ssl]'")
    p.add_argument("data", help="image folder (labels are not used)")
    p.add_argument("--method", choices=SSL_METHODS, default=ssl.method)
    p.add_argument("--model", choices=MODEL_NAMES + BACKPROP_MODEL_NAMES, default=ssl.model)
    p.add_argument("--model-kwargs", type=json_object, metavar="JSON")
    p.add_argument("--img-size", type=int, help="default: the folder's own when square and "
                   "≤ 64, else 32")
    p.add_argument("--in-chans", type=int, choices=[1, 3])
    p.add_argument("--budget-s", type=float, default=ssl.budget_s,
                   help="wall-clock seconds of training (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=ssl.batch_size)
    p.add_argument("--lr", type=float, default=ssl.lr)
    p.add_argument("--descriptor-dims", **DESCRIPTOR_DIMS)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=ssl.seed)
    p.add_argument("--out", default=ssl.out, help="run dir to write (default %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.set_defaults(func=train_ssl)


def pretrain(args: argparse.Namespace) -> None:
    from ..pretraining import pretrain

    cfg = load_config(PretrainConfig, args.config, section="pretrain", data=args.data,
                      model=args.model, rule=args.rule, epochs=args.epochs, steps=args.steps,
                      batch_size=args.batch_size, lr=args.lr, mode=args.mode, device=args.device,
                      seed=args.seed, out=args.out, split=args.split, data_root=args.data_root,
                      in_chans=args.in_chans, img_size=args.img_size, num_workers=args.num_workers,
                      checkpoint_every=args.checkpoint_every, precision=args.precision,
                      compile=args.compile, model_kwargs=args.model_kwargs,
                      descriptor_dims=args.descriptor_dims, flip=args.flip,
                      embeddings_out=args.embeddings_out,
                      budget_s=args.budget_s, resume=args.resume or None, quiet=args.quiet or None)
    print(pretrain(cfg))


def show_filters(args: argparse.Namespace) -> None:
    from ..viz import save_filters

    print(save_filters(args.run, args.out, args.scale))


def finetune(args: argparse.Namespace) -> None:
    from ..finetuning import finetune

    cfg = load_config(FinetuneConfig, args.config, section="finetune", run=args.run,
                      data=args.data, labels_per_class=args.labels_per_class,
                      label_fraction=args.label_fraction, mode=args.mode, epochs=args.epochs,
                      lr=args.lr, batch_size=args.batch_size, augment=args.augment or None,
                      from_scratch=args.from_scratch or None, out=args.out, split=args.split,
                      data_root=args.data_root, device=args.device, seed=args.seed,
                      quiet=args.quiet or None)
    print(finetune(cfg))


def train_ssl(args: argparse.Namespace) -> None:
    from ..ssl import train_ssl

    given = {k: getattr(args, k) for k in ("model_kwargs", "img_size", "in_chans",
                                           "descriptor_dims") if getattr(args, k) is not None}
    print(train_ssl(SSLConfig(data=args.data, method=args.method, model=args.model,
                              budget_s=args.budget_s, batch_size=args.batch_size, lr=args.lr,
                              num_workers=args.num_workers, seed=args.seed, out=args.out,
                              device=args.device or "auto", resume=args.resume,
                              quiet=args.quiet, **given)))
