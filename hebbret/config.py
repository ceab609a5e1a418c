"""Dataclass configs per stage. A TOML file gives defaults, explicit arguments override them."""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C")
TRAINING_MODES = ("consecutive", "greedy")  # all Hebbian layers learn together / one at a time
PRECISIONS = {"fp32": None, "bf16": "bfloat16"}  # name -> autocast dtype (None: no autocast)


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
    keep_freed_memory: bool = True  # CPU: glibc keeps freed buffers instead of unmapping them
    checkpoint_every: int = 200  # steps between resume checkpoints (also at each epoch end)
    resume: bool = False  # continue the run in `out` from its last checkpoint
    quiet: bool = False  # no progress bar
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # extra backbone arguments
    descriptor_dims: int = 1024  # embedding PCA fitted after training (fewer images: fewer); 0: off

    def __post_init__(self) -> None:
        if self.mode not in TRAINING_MODES:
            raise ValueError(f"mode must be one of {TRAINING_MODES}, got {self.mode!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
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


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
