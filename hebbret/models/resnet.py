"""A small standard ResNet (timm's resnet18 with the usual small-image stem) as a hebbret
backbone, so a backprop-trained ResNet (``hebbret ssl --model resnet18_small``) is saved, loaded,
embedded and indexed like any run. It has no Hebbian layer: ``hebbret pretrain`` cannot train it."""

from __future__ import annotations

from typing import Any

import timm
from timm.models import register_model
from torch import Tensor, nn

from ._base import HebbNet, model_kwargs, to_size

__all__ = ["ResNetSmall"]


class ResNetSmall(HebbNet):
    """timm's resnet18 with a 3×3 stride-1 first conv and no max-pool (the CIFAR variant of
    lightly's benchmarks): stem = conv, BN, ReLU; blocks = timm's layer1..layer4.

    ``forward_features``: (B, C, H, W) -> (B, 512, H/8, W/8); ``forward_head(pre_logits=True)``
    average-pools it -> (B, 512); ``num_features`` = 512. Descriptor: 'features', avg pool.
    """

    def __init__(self, in_chans: int = 3, img_size: int | tuple[int, int] = 32,
                 num_classes: int = 10, rule: str = "none", drop_rate: float = 0.0) -> None:
        super().__init__()
        if rule != "none":
            raise ValueError(f"resnet18_small has no Hebbian layers; its rule is 'none', got {rule!r}")
        img_size = to_size(img_size)
        self.model_args = dict(in_chans=in_chans, img_size=list(img_size), num_classes=num_classes,
                               rule=rule, drop_rate=drop_rate)
        net = timm.create_model("resnet18", pretrained=False, in_chans=in_chans, num_classes=0)
        self.stem = nn.Sequential(nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False), net.bn1, net.act1)
        self.blocks = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        self.num_features = net.num_features
        self.drop_rate = drop_rate
        self.head_drop = nn.Dropout(drop_rate)
        self.reset_classifier(num_classes)
        self.default_cfg = {
            "architecture": "resnet18_small", "input_size": (in_chans, *img_size),
            "num_classes": num_classes, "mean": (0.5,) * in_chans, "std": (0.25,) * in_chans,
            "hebb": {"rule": "none", "lr": 0.0, "batch_size": 128, "epochs": 0,
                     "mode": "consecutive"},
            "embedding": {"layer": "features", "pool": "avg"},
        }

    def forward_features(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return self.forward_blocks(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x.mean((2, 3)) if x.dim() == 4 else x
        return x if pre_logits else self.head(self.head_drop(x))


@register_model
def resnet18_small(pretrained: bool = False, **kwargs: Any) -> ResNetSmall:
    """timm's resnet18 for small images, trained from scratch by backprop (``hebbret ssl``)."""
    if pretrained:
        raise ValueError("resnet18_small has no pretrained weights; train one with `hebbret ssl`")
    return ResNetSmall(**model_kwargs(kwargs))
