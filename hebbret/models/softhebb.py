"""SoftHebb's convolutional networks (Journé et al., ICLR 2023) as timm backbones: the 3-layer
CIFAR-10 net, the 4-layer STL-10 net (96 px) and the 5-layer ImageNet net (160 px), with the
layer settings of SoftHebb's own presets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from timm.models import register_model
from torch import Tensor, nn

from ..hebb.layers import HebbConv2d
from ._base import HebbNet, PatchWhitening, Triangle, feature_shape, model_kwargs, to_size

__all__ = ["FAMILIES", "SoftHebbNet"]


@dataclass(frozen=True)
class Family:
    """One SoftHebb network: per Hebbian layer its kernel, Triangle power and pooling, and the
    defaults a builder fills in (widths, inverse temperatures, learning rates, batch, size)."""

    kernels: tuple[int, ...]
    powers: tuple[float, ...]
    pools: tuple[str, ...]  # "max": MaxPool2d(4, 2, 1); "avg": AvgPool2d(4, 2, 1); "avg2": AvgPool2d(2)
    widths: tuple[int, ...]
    t_inv: tuple[float, ...]
    lr: tuple[float, ...]
    batch_size: int
    img_size: int  # the input side the net was designed for
    descriptor: dict[str, Any]  # the embedding: runs.EmbeddingSpec fields
    doc: str


# The retrieval descriptor of each net, chosen on held-out training rows (README, "Images of any
# size"): the 32 px net keeps its flattened last map (SoftHebb's readout also takes it; every
# pooled descriptor measured lost 1-8 kNN points on CIFAR-10 and the solar cells); the nets for
# larger inputs average their last map over a 2×2 grid, 4 × the last width at any input size
# (the flattened map grows with the image: 55,296 values at 96 px for the CPU-width c4).
# Each also sums the views of the image and its mirror image (flip "h"), chosen the same way
# (docs/results.md, "Near-duplicates"): kNN +0.6 / mAP +0.9 on CIFAR-10 5k, kNN +0.95 / mAP
# -0.02 on the solar cells, and a mirrored copy gets the same embedding as its original.
FLATTEN = {"layer": "features", "pool": "flatten", "flip": "h"}
GRID = {"layer": "features", "pool": "avg", "grid": 2, "flip": "h"}

FAMILIES: dict[str, Family] = {
    "hebb_softhebb_c3": Family((5, 3, 3), (0.7, 1.4, 1.0), ("max", "max", "avg2"),
                               (96, 384, 1536), (1.0, 0.65, 0.25), (0.08, 0.005, 0.01), 10, 32,
                               FLATTEN,
                               "SoftHebb's CIFAR-10 net (32 px)"),
    # batch 10 as the CIFAR net (measured so on the solar cells); SoftHebb's own runs used 64
    "hebb_softhebb_c4": Family((5, 3, 3, 3), (0.7, 0.7, 1.4, 1.0), ("avg", "max", "avg", "avg2"),
                               (96, 384, 1536, 6144), (1.0, 0.65, 0.45, 0.25),
                               (0.08, 0.005, 0.01, 0.01), 10, 96, GRID,
                               "SoftHebb's STL-10 net (96 px)"),
    "hebb_softhebb_c5": Family((5, 3, 3, 3, 3), (0.7, 0.7, 0.7, 1.4, 1.0),
                               ("max", "max", "max", "max", "avg2"), (48, 192, 768, 3072, 12288),
                               (1.1, 0.7, 0.5, 0.4, 0.25), (0.08, 0.01, 0.01, 0.01, 0.01), 10, 160,
                               GRID, "SoftHebb's ImageNet net (160 px)"),
}



def _pool(kind: str) -> nn.Module:
    if kind == "max":
        return nn.MaxPool2d(4, 2, 1)
    if kind == "avg":
        return nn.AvgPool2d(4, 2, 1)
    return nn.AvgPool2d(2)


class SoftHebbNet(HebbNet):
    """Per Hebbian layer: BN (affine-free) → conv k×k (reflect padding) → Triangle(power) →
    pool, every pool halving the map; then flatten → dropout → linear (``forward_head``).

    ``widths``: channels per layer (the family's by default; narrower nets for CPUs keep the
    design); ``t_inv``: SoftHebb's inverse temperatures. ``init_radius``: the neurons' initial
    norm (None: the rule's, 25 for softhebb as SoftHebb); 5 learns better features within a few
    hundred steps on collections of a few thousand images. ``whiten_patch``: > 0 puts a
    :class:`PatchWhitening` of that patch size (``whiten_eps``) in front of block 0, fitted on
    the training images when pretraining starts; 0: none.

    ``forward_features``: (B, C, H, W) -> (B, widths[-1], H/2^L, W/2^L) for L layers;
    ``forward_head(pre_logits=True)`` flattens it (24,576 values for the 3-layer net at 32×32);
    the embedding (``default_cfg["embedding"]``) is the family's descriptor: that flattened map
    for the 32 px net, its 2×2-grid average (4 · widths[-1] values) for the larger ones.
    """

    def __init__(
        self,
        family: str = "hebb_softhebb_c3",
        in_chans: int = 3,
        img_size: int | tuple[int, int] | None = None,
        num_classes: int = 10,
        rule: str = "softhebb",
        t_inv: tuple[float, ...] | None = None,
        widths: tuple[int, ...] | None = None,
        drop_rate: float = 0.5,
        init_radius: float | None = None,
        whiten_patch: int = 0,
        whiten_eps: float = 0.1,
    ) -> None:
        super().__init__()
        fam = FAMILIES[family]
        n = len(fam.kernels)
        img_size = to_size(img_size or fam.img_size)
        widths = tuple(int(v) for v in (widths or fam.widths))
        t_inv = tuple(float(v) for v in (t_inv or fam.t_inv))
        if len(widths) != n or len(t_inv) != n:
            raise ValueError(f"{family} has {n} Hebbian layers: give {n} widths and {n} t_inv, got "
                             f"widths={list(widths)}, t_inv={list(t_inv)}")
        if min(widths) < 1:
            raise ValueError(f"widths must be positive, got {list(widths)}")
        if min(img_size) < 2 ** n:
            raise ValueError(f"{family} needs inputs of at least {2 ** n}×{2 ** n} pixels, got "
                             f"{img_size}")
        if whiten_patch and whiten_patch // 2 >= min(img_size):
            raise ValueError(f"whiten_patch {whiten_patch} is too large for {img_size} images")
        self.family = fam
        self.model_args = dict(in_chans=in_chans, img_size=list(img_size), num_classes=num_classes,
                               rule=rule, t_inv=list(t_inv), widths=list(widths), drop_rate=drop_rate,
                               init_radius=init_radius, whiten_patch=whiten_patch,
                               whiten_eps=whiten_eps)

        def params(i: int) -> dict[str, float]:
            return {"init_radius": init_radius, **({"t_inv": t_inv[i]} if rule == "softhebb" else {})}

        self.stem = (PatchWhitening(in_chans, whiten_patch, whiten_eps) if whiten_patch
                     else nn.Identity())
        chans = (in_chans, *widths)
        self.blocks = nn.ModuleList([
            nn.Sequential(
                nn.BatchNorm2d(chans[i], affine=False),
                HebbConv2d(chans[i], chans[i + 1], k, padding=k // 2, padding_mode="reflect",
                           rule=rule, **params(i)),
                Triangle(power),
                _pool(pool),
            ) for i, (k, power, pool) in enumerate(zip(fam.kernels, fam.powers, fam.pools,
                                                        strict=True))])
        c, h, w = feature_shape(nn.Sequential(self.stem, *self.blocks), in_chans, img_size)
        self.num_features = c * h * w
        self.drop_rate = drop_rate
        self.head_drop = nn.Dropout(drop_rate)
        self.reset_classifier(num_classes)
        self.default_cfg = _cfg(family, in_chans, img_size, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return self.forward_blocks(x)


def _cfg(family: str, in_chans: int, img_size: tuple[int, int], num_classes: int
         ) -> dict[str, Any]:
    fam = FAMILIES[family]
    return {
        "architecture": family,
        "input_size": (in_chans, *img_size),
        "num_classes": num_classes,
        # Pixels only scaled to [0, 1]: the affine-free BatchNorm in front of conv1 normalises.
        "mean": (0.0,) * in_chans,
        "std": (1.0,) * in_chans,
        "hebb": {"rule": "softhebb", "lr": list(fam.lr), "batch_size": fam.batch_size, "epochs": 1,
                 "min_steps": 1000,  # small collections repeat: the rule needs steps to converge
                 "mode": "consecutive"},
        "embedding": dict(fam.descriptor),
    }


def _build(family: str, pretrained: bool, kwargs: dict[str, Any]) -> SoftHebbNet:
    if pretrained:
        raise ValueError(f"{family} has no pretrained weights; train one with `hebbret pretrain`")
    return SoftHebbNet(family, **model_kwargs(kwargs))


@register_model
def hebb_softhebb_c3(pretrained: bool = False, **kwargs: Any) -> SoftHebbNet:
    """SoftHebb's CIFAR-10 net (3 Hebbian layers, 96/384/1536); softhebb rule, batch 10."""
    return _build("hebb_softhebb_c3", pretrained, kwargs)


@register_model
def hebb_softhebb_c4(pretrained: bool = False, **kwargs: Any) -> SoftHebbNet:
    """SoftHebb's STL-10 net (4 Hebbian layers, 96/384/1536/6144) for ~96 px inputs."""
    return _build("hebb_softhebb_c4", pretrained, kwargs)


@register_model
def hebb_softhebb_c5(pretrained: bool = False, **kwargs: Any) -> SoftHebbNet:
    """SoftHebb's ImageNet net (5 Hebbian layers, 48/192/768/3072/12288) for ~160 px inputs."""
    return _build("hebb_softhebb_c5", pretrained, kwargs)
