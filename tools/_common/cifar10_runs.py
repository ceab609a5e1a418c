"""The runs behind tools/reproduce_cifar10.py: its settings, the c3 / 6-layer backbones it
pretrains once and reuses, their cached features."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common.cifar10_tables import STAGES  # noqa: F401  (the stages, in order: one list)
from hebbret.stages import BackboneStages

log = logging.getLogger("reproduce_cifar10")




@dataclass
class Settings:
    """The protocol; the defaults are the published ones, the smoke test shrinks them."""

    c3_kwargs: dict = field(default_factory=dict)  # backbone arguments (smoke test: narrow)
    sixl_kwargs: dict = field(default_factory=dict)
    readout_epochs: int = 50
    readout_seeds: tuple[int, ...] = (0, 1, 2)
    budgets: tuple[float, ...] = (0.01, 0.05, 0.10)
    seeds: tuple[int, ...] = (0, 1, 2)
    finetune_epochs: int = 20
    sixl_epochs: int = 1  # Hebbian epochs of hebb_fasthebb_6l
    knn_k: int = 20
    pca_dim: int = 256
    whiten_dim: int = 512  # section 2's PCA-whitening rows (FAISS PCAW<d>)
    linear_max_iter: int = 100  # L-BFGS iterations of the per-layer table's linear probe
    embed_batch: int = 256
    speed_steps: int = 200  # batches per round of the interleaved step-rate measurement
    skip: tuple[str, ...] = ()  # few-label cells not to run ("c3-scratch/0.1"): "too slow"
    archs: tuple[str, ...] = ()  # few-label rows to run now (default: all of FEW_LABEL_ARCHS)
    protocols: tuple[str, ...] = ("knn", "linear", "propagate")  # 3b protocols to run now; the
    #                                                  others' cells are kept from the last row


def pretrain_once(run: Path, data: Path, **kwargs: Any) -> dict[str, Any]:
    """Hebbian-pretrain into ``run`` (``ROOT/run``) unless complete; resumes a killed run."""
    stages = BackboneStages(run.parent, run_name=run.name, quiet=True, digits=2)
    return stages.pretrain(str(data / "train"), img_size=32, **kwargs)


def embed_once(run: Path, data: Path, out: Path, settings: Settings, **kwargs: Any) -> float | None:
    """Embed ``data`` into ``out`` unless complete; returns the wall time or None if reused."""
    stages = BackboneStages(run.parent, run_name=run.name, quiet=True, digits=2)
    name = out.name.removeprefix("emb_")
    stages.embed(name, str(data), batch_size=settings.embed_batch, **kwargs)
    return stages.embed_seconds.get(name)


C3_VARIANTS = {"hebbian": "softhebb", "random": "none"}
C3_WIDTHS = [96, 384, 1536]  # SoftHebb's


def wider_last(c3_kwargs: dict) -> dict:
    widths = list(c3_kwargs.get("widths", C3_WIDTHS))
    return {"widths": widths[:-1] + [2 * widths[-1]]}


LIFT_VARIANTS = {
    "init-radius-5": ("neurons start at norm 5 instead of SoftHebb's 25 (the embedded default's "
                      "choice for small collections)", {"init_radius": 5.0}, {}),
    "two-epochs": ("two Hebbian epochs instead of one (10,000 steps per layer)", {},
                   {"epochs": 2}),
    "wide-last-layer": ("twice the neurons in the last layer (3,072: 49,152-d features)",
                        wider_last, {}),
    "input-whitening": ("5×5 ZCA patch whitening of the input (ε = 0.1 · mean eigenvalue, fitted "
                        "on 5,120 training images) in front of layer 1", {"whiten_patch": 5}, {}),
}


def c3_features(work: Path, data: Path, variant: str, settings: Settings,
                precision: str = "fp32") -> tuple[Path, dict[str, Any]]:
    """Pretrain (or reuse) a c3 run and its cached float16 train/test features (flattened, as
    SoftHebb's readout takes them); ``variant``: hebbian, random or a LIFT_VARIANTS name."""
    name = f"c3-{variant}" + ("" if precision == "fp32" else f"-{precision}")
    run = work / name / "run"
    _, lift, options = LIFT_VARIANTS.get(variant, ("", {}, {}))
    lift = lift(settings.c3_kwargs) if callable(lift) else lift
    info = pretrain_once(run, data, model="hebb_softhebb_c3",
                         rule=C3_VARIANTS.get(variant, "softhebb"),
                         model_kwargs={**settings.c3_kwargs, **lift},
                         **{"epochs": 1, **options},  # SoftHebb: 1 epoch
                         **({} if precision == "fp32" else {"precision": precision}))
    for split in ("train", "test"):
        wall = embed_once(run, data / split, work / name / f"emb_{split}", settings,
                          dtype="float16", layer="features", pool="flatten",  # the readout's
                          project=False)
        if wall is not None:  # also in pretrain.json, for later reuses of the run
            info[f"embed_{split}_s"] = wall
    return work / name, info


FEW_LABEL_ARCHS = {  # name -> (backbone, Hebbian rule); "scratch" rows reuse the architecture
    "6l-hpca": ("hebb_fasthebb_6l", "hpca"),
    "6l-swta": ("hebb_fasthebb_6l", "swta"),
    "c3-softhebb": ("hebb_softhebb_c3", "softhebb"),
    "6l-scratch": ("hebb_fasthebb_6l", None),
    "c3-scratch": ("hebb_softhebb_c3", None),
}


def hebbian_run(work: Path, data: Path, arch: str, settings: Settings) -> Path:
    """The Hebbian-pretrained run behind a few-label row (scratch rows: its architecture)."""
    model, rule = FEW_LABEL_ARCHS[arch]
    if model == "hebb_softhebb_c3":
        c3_features(work, data, "hebbian", settings)
        return work / "c3-hebbian" / "run"
    rule = rule or "hpca"
    run = work / f"6l-{rule}" / "run"
    pretrain_once(run, data, model=model, rule=rule, epochs=settings.sixl_epochs,
                  model_kwargs=settings.sixl_kwargs)
    return run


def find_data_root(root: Path) -> Path:
    for cand in (root, root / "cifar10"):
        if (cand / "train").is_dir() and (cand / "test").is_dir():
            return cand
    raise FileNotFoundError(f"no train/ and test/ folders under {root} or {root / 'cifar10'}; "
                            f"extract cifar10-jpeg.tar.gz there first")
