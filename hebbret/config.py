"""Dataclass configs per stage, and the names and defaults the command line offers.

A TOML file gives defaults, explicit arguments override them. This module imports nothing heavy
(no torch, timm or FAISS): the CLI builds its parser from it alone, and the stages import their
choices from here.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C")

# ----------------------------------------------------------------------- choices and defaults
DEVICES = ("auto", "cpu", "cuda")  # what --device accepts (also cuda:N)
NAMED_DATASETS = ("fashion-mnist", "fashion-mnist-mini")
MODEL_NAMES = ("hebb_softhebb_c3", "hebb_softhebb_c4", "hebb_softhebb_c5", "hebb_fasthebb_6l")
BACKPROP_MODEL_NAMES = ("resnet18_small",)  # standard backbones, trained only by `hebbret ssl`
RULE_NAMES = ("hpca", "none", "softhebb", "swta")  # hebbret.hebb.rules.RULES
TRAINING_MODES = ("consecutive", "greedy")  # all Hebbian layers learn together / one at a time
PRECISIONS = {"fp32": None, "bf16": "bfloat16"}  # name -> autocast dtype (None: no autocast)
COMPILE_CHOICES = ("auto", "on", "off")  # torch.compile of the Hebbian step (hebbret/compiling.py)
POOLS = ("flatten", "avg", "max", "gem")  # descriptor pooling
FLIPS = ("none", "h", "hv")  # descriptor views: the image; + its mirror; + upside down and both
FLIP_CHOICES = (*FLIPS, "auto")  # auto: chosen on held-out training rows (embed.choose_views)
EMBED_BATCH_SIZE = 256
DTYPES = ("float32", "float16")  # of a written embeddings.npy
EXPORT_FORMATS = ("safetensors", "pt2", "onnx")
METRIC_NAMES = ("ip", "l2")  # FAISS metrics: inner product (cosine on L2-normalised rows), L2
KNN_TEMPERATURE = 0.07  # votes exp(cos / T), InstDisc / DINO's weighted kNN
DEFAULT_KS = (10, 20, 100, 200)  # kNN evaluation
RETRIEVAL_KS = (1, 10, 100)
SEARCH_K = 10  # results per query of `hebbret search`
DEDUP_THRESHOLD = 0.82  # similarity above which two images are near-duplicates: chosen on
# copies planted among training images (tools/bench_dedup.py, docs/results.md "Near-duplicates")
DEDUP_NEIGHBOURS = 2  # ... and each among the other's 2 nearest rows (measured there too)
LINEAR_READOUTS = ("logreg", "softhebb")  # `eval linear --readout`


def check_flip(flip: str | None) -> None:
    """A config's ``flip``: one of FLIP_CHOICES, or None (the backbone's own views)."""
    if flip not in (None, *FLIP_CHOICES):
        raise ValueError(f"flip must be one of {FLIP_CHOICES}, got {flip!r}")


@dataclass
class PretrainConfig:
    """Unsupervised Hebbian training of a backbone."""

    data: str = ""  # image folder, or a named dataset: fashion-mnist
    model: str = "hebb_softhebb_c3"  # a hebbret backbone (timm name)
    rule: str | None = None  # hpca | swta | softhebb | none; None: the backbone's default
    epochs: int | None = None  # passes over the data (per layer in greedy mode); None: default
    steps: int | None = None  # Hebbian steps per layer phase (replaces epochs); None: epochs, or
    #                           the backbone's default epochs but at least its min_steps
    batch_size: int | None = None  # None: the backbone's default
    lr: list[float] | None = None  # one per Hebbian layer, or a single value for all; None: default
    mode: str = "consecutive"  # consecutive: all layers learn together; greedy: one at a time
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0  # data order and initial weights
    out: str = "runs/pretrain"  # run dir to write
    split: str = "train"  # split of a named dataset
    data_root: str | None = None  # where a named dataset's files are (fashion-mnist idx files)
    in_chans: int | None = None  # None: the data's own (fashion-mnist 1, folders 3)
    img_size: int | None = None  # None: the data's own (fashion-mnist 28) or the backbone's
    num_workers: int = 0  # data-loading processes
    channels_last: bool = True  # NHWC activations: faster oneDNN/cuDNN convs and pooling
    precision: str = "fp32"  # fp32 | bf16: forward and Yᵀ X under bfloat16 autocast (weights fp32)
    compile: str = "auto"  # torch.compile the step: on | off | auto (CPU, runs of ≥ 2000 steps)
    keep_freed_memory: bool = True  # CPU: glibc keeps freed buffers instead of unmapping them
    checkpoint_every: int = 200  # steps between resume checkpoints (also at each epoch end)
    budget_s: float | None = None  # also stop after this much wall clock of training (loading
    #                               included), as `hebbret ssl` does; None: the step budget only
    resume: bool = False  # continue the run in `out` from its last checkpoint
    quiet: bool = False  # no progress bar
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # extra backbone arguments
    descriptor_dims: int = 1024  # embedding PCA fitted after training (fewer images: fewer); 0: off
    # the views the descriptor sums (runs.EmbeddingSpec.flip); None: the backbone's; auto: its
    # own or the image alone, by kNN on held-out labeled training rows (in the PCA's sample)
    flip: str | None = None
    # also write the training images' embeddings dir here (as `hebbret embed` would) when the
    # descriptor PCA's sample holds every one of them: they are not run through the net again
    embeddings_out: str | None = None

    def __post_init__(self) -> None:
        check_flip(self.flip)
        if self.mode not in TRAINING_MODES:
            raise ValueError(f"mode must be one of {TRAINING_MODES}, got {self.mode!r}")
        if self.budget_s is not None and not self.budget_s > 0:
            raise ValueError(f"budget_s must be positive, got {self.budget_s}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.compile not in COMPILE_CHOICES:
            raise ValueError(f"compile must be one of {COMPILE_CHOICES}, got {self.compile!r}")
        if isinstance(self.lr, (int, float)):
            self.lr = [float(self.lr)]
        bad = [v for v in self.lr or [] if not (isinstance(v, (int, float)) and math.isfinite(v)
                                                  and v > 0)]
        if bad:
            raise ValueError(f"learning rates must be positive and finite, got {bad[0]!r} in "
                             f"lr={self.lr}")
        if self.descriptor_dims < 0:
            raise ValueError(f"descriptor_dims must be ≥ 0 (0: no PCA), got {self.descriptor_dims}")
        for name in ("epochs", "steps", "batch_size", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")


def load_config(cls: type[C], path: str | os.PathLike | None = None, section: str | None = None,
                **overrides: Any) -> C:
    """Build ``cls`` from a TOML file (top level, or its ``[section]`` table) and overrides.

    Overrides that are None are ignored, so unset command-line flags keep the file's values.
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        with open(path, "rb") as f:
            doc = tomllib.load(f)
        values = doc.get(section, doc) if section else doc
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}; {cls.__name__} takes {sorted(known)}")
    values = {**values, **{k: v for k, v in overrides.items() if v is not None}}
    return cls(**values)


FINETUNE_MODES = ("full", "linear")  # end to end / only the head on the frozen backbone


@dataclass
class FinetuneConfig:
    """Supervised training of a run's backbone on (few) labels."""

    run: str = ""  # parent run dir: its weights (or, with from_scratch, its architecture)
    data: str = ""  # labeled image folder, or a named dataset: fashion-mnist
    labels_per_class: int | None = None  # few labels: this many per class ...
    label_fraction: float | None = None  # ... or this share of the set, class-balanced
    mode: str = "full"  # full: end-to-end; linear: head only, frozen backbone
    epochs: int = 20
    lr: float = 1e-3
    backbone_lr_scale: float = 1.0  # full: the backbone learns at lr × this, the head at lr
    momentum: float = 0.9  # Nesterov
    weight_decay: float = 5e-4
    batch_size: int = 64
    augment: bool = False  # random crops (reflect-padded by 1/8 of the size) and flips
    from_scratch: bool = False  # same architecture, random weights, same protocol
    out: str = "runs/finetune"
    split: str = "train"
    data_root: str | None = None
    device: str = "auto"
    seed: int = 0
    num_workers: int = 0
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.mode not in FINETUNE_MODES:
            raise ValueError(f"mode must be one of {FINETUNE_MODES}, got {self.mode!r}")
        if self.labels_per_class is not None and self.label_fraction is not None:
            raise ValueError("give labels_per_class or label_fraction, not both")
        if self.backbone_lr_scale < 0:
            raise ValueError(f"backbone_lr_scale must be >= 0, got {self.backbone_lr_scale}")


PROTOCOLS = ("knn", "linear", "propagate", "full")
BASELINES = ("ssl",)  # the extra rows `hebbret run --baselines` can add to its report
FROZEN_PROTOCOLS = ("knn", "linear", "propagate")


@dataclass
class FewShotConfig:
    """Which protocols, label budget and seeds; the protocols' own settings."""

    protocols: list[str] = field(default_factory=lambda: list(FROZEN_PROTOCOLS))
    labels_per_class: int | None = None
    label_fraction: float | None = None
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    knn_k: int = 20
    temperature: float = KNN_TEMPERATURE
    standardize: bool = True  # knn, propagate: compare L2-normalised features standardised with
    #                           the collection's statistics (no labels); linear chooses by CV
    graph_k: int = 10  # neighbours per node of the propagation graph
    graph_index: str = "Flat"  # FAISS factory the graph is searched with (inner product on the
    #                            compared features); e.g. "PCA256,Flat" for very wide features
    alpha: float | None = None  # diffusion strength; None: cross-validated on the labeled rows
    prior_weight: float | None = None  # weight of the linear head's predictions in the
    #                                    diffusion (0: plain label propagation); None: CV
    gamma: float = 3.0  # affinity power

    def __post_init__(self) -> None:
        unknown = sorted(set(self.protocols) - set(PROTOCOLS))
        if unknown:
            raise ValueError(f"unknown few-label protocols {unknown}; choose from {list(PROTOCOLS)}")
        if (self.labels_per_class is None) == (self.label_fraction is None):
            raise ValueError("give exactly one of labels_per_class and label_fraction")
        if not self.seeds:
            raise ValueError("give at least one seed")


@dataclass
class ServeConfig:
    """What `hebbret serve` serves and how."""

    index: str
    run: str | None = None  # the model that embeds uploads; None: the one the index records
    host: str = "127.0.0.1"  # loopback only unless asked
    port: int = 8000
    k: int = 10  # default number of hits
    max_k: int = 100
    max_upload_mb: float = 10.0
    max_pixels: int = 40_000_000  # larger images are refused before they are decoded
    thumb_px: int = 96  # thumbnails are at most this many pixels a side (small images: scaled up)
    device: str = "auto"
    token: str | None = None  # required on every route when set (Bearer header or cookie)
    public: bool = False  # serve a non-loopback host without a token (logs a warning)
    rate_limit: float = 30.0  # requests per second per client IP (token bucket); 0: no limit
    rate_burst: int = 250  # bucket size: requests a client may send at once (a page of max_k
    #                        thumbnails and its API calls fit, with room)
    reload_s: float = 1.0  # look for a new version of the index (`index update`) this often


LOOPBACK = ("127.0.0.1", "localhost", "::1")
CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class RunConfig:
    """Everything `hebbret run` does, in one place."""

    data: str = "fashion-mnist-mini"  # named dataset with train/test splits, or DIR/{train,test}
    data_root: str | None = None  # files of a named dataset
    model: str | None = None  # None: the SoftHebb net that fits the input size (choose_inputs)
    rule: str | None = None  # None: the backbone's default Hebbian rule
    pretrain_epochs: int | None = None  # None: the backbone's default
    pretrain_steps: int | None = None  # Hebbian steps (instead of epochs); None: default budget
    pretrain_batch_size: int | None = None
    pretrain_lr: list[float] | None = None  # one per Hebbian layer or one for all; None: default
    in_chans: int | None = None
    img_size: int | None = None  # None: chosen from the images (choose_inputs)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    layer: str | None = None  # descriptor; None: the backbone's (model card -> embedding)
    pool: str | None = None
    descriptor_dims: int = PretrainConfig.descriptor_dims  # its PCA after pretraining; 0: none
    flip: str | None = "auto"  # its views (PretrainConfig.flip); each backbone chooses its own
    labels_per_class: int | None = 20  # the few labels (or label_fraction)
    label_fraction: float | None = None
    protocols: list[str] = field(default_factory=lambda: list(PROTOCOLS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # labeled subsets
    finetune_epochs: int = 20
    finetune_lr: float = 1e-3
    backbone_lr_scale: float = 1.0  # full: the backbone learns at finetune_lr × this
    finetune_batch_size: int = 64
    augment: bool = False
    knn_k: int = 20
    retrieval_k: int = 100
    linear_max_iter: int = 100  # L-BFGS iterations of the linear probe
    embed_batch_size: int = 256
    queries_shown: int = 6  # rows of retrieval.png
    out: str = "runs/hebbret-run"
    seed: int = 0
    device: str = "auto"
    quiet: bool = False
    # more rows for the report: "ssl" (BYOL on the same net for the Hebbian pretraining's wall
    # clock; needs pip install 'hebbret[ssl]'); off by default: it doubles the training time
    baselines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_flip(self.flip)
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise ValueError(f"unknown baselines {unknown}; choose from {list(BASELINES)}")
        if self.label_fraction is not None:  # a fraction replaces the per-class default
            self.labels_per_class = None
        if isinstance(self.pretrain_lr, (int, float)):
            self.pretrain_lr = [float(self.pretrain_lr)]
        FewShotConfig(protocols=self.protocols, labels_per_class=self.labels_per_class,
                      label_fraction=self.label_fraction, seeds=self.seeds)  # validates


def load_run_config(name_or_path: str | None = None, **overrides: Any) -> RunConfig:
    """A shipped config by name (default, fashion-mnist, cifar10) or a user's TOML file."""
    name = name_or_path or "default"
    path = Path(name)
    if not path.suffix:
        path = CONFIG_DIR / f"{name}.toml"
        if not path.is_file():
            shipped = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
            raise ValueError(f"no shipped config named {name!r}; choose one of {shipped} or "
                             f"give a .toml file")
    return load_config(RunConfig, path, section="run", **overrides)


# Self-supervised backprop baselines (lightly). BYOL is the non-contrastive one: lightly's CIFAR-10
# benchmark (ResNet-18, batch 128, 200 epochs) gives kNN 0.869 for BYOL, 0.840 DINO, 0.847 SimCLR.
SSL_METHODS = ("simclr", "byol")


@dataclass
class SSLConfig:
    """A self-supervised backprop baseline: the same backbone trained end to end with lightly's
    SimCLR or BYOL for a wall-clock budget (settings: lightly's CIFAR-10 benchmark — SGD lr 0.06,
    momentum 0.9, wd 5e-4, SimCLR augmentations without blur; SimCLR: NT-Xent at temperature
    0.5, projection head 512 -> 128; BYOL: heads 1024 -> 256, momentum 0.99 -> 1 cosine)."""

    data: str = ""  # image folder (labels, if any, are not used)
    method: str = "simclr"
    model: str = "hebb_softhebb_c3"  # a hebbret backbone, trained here by backprop
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    img_size: int | None = None  # None: the folder's own when square and ≤ 64, else 32
    in_chans: int | None = None  # None: the folder's own
    budget_s: float = 60.0  # wall-clock seconds of training steps (data loading included)
    batch_size: int = 128
    lr: float = 0.06
    momentum: float = 0.9
    weight_decay: float = 5e-4
    temperature: float = 0.5  # SimCLR only
    descriptor_dims: int = 1024  # the embedding PCA fitted after training, as pretrain does
    flip: str | None = None  # the descriptor's views, as pretrain's (PretrainConfig.flip)
    num_workers: int = 0
    checkpoint_every_s: float = 60.0  # resume checkpoints at most this far apart
    out: str = "runs/ssl"
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.method not in SSL_METHODS:
            raise ValueError(f"method must be one of {SSL_METHODS}, got {self.method!r}")
        if not self.budget_s > 0:
            raise ValueError(f"budget_s must be positive, got {self.budget_s}")
        check_flip(self.flip)
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be at least 2 (pairs of views), got {self.batch_size}")
