"""SoftHebb's 3-layer CIFAR network (Journé et al., ICLR 2023), as a timm backbone."""

from __future__ import annotations

from typing import Any

from timm.models import register_model
from torch import Tensor, nn

from ..hebb.layers import HebbConv2d
from ._base import HebbNet, PatchWhitening, Triangle, feature_shape, model_kwargs, to_size

__all__ = ["SoftHebbC3"]


class SoftHebbC3(HebbNet):
    """BN → conv5×5 96 → Triangle(0.7) → maxpool(4,2,1); BN → conv3×3 384 → Triangle(1.4) →
    maxpool(4,2,1); BN → conv3×3 1536 → Triangle(1.0) → avgpool(2); flatten → dropout → linear.

    ``init_radius``: the neurons' initial norm (None: the rule's, 25 for softhebb as SoftHebb);
    5 learns better features within a few hundred steps on collections of a few thousand images.
    ``whiten_patch``: > 0 puts a :class:`PatchWhitening` of that patch size (``whiten_eps``) in
    front of block 0, fitted on the training images when pretraining starts; 0: none.

    ``forward_features``: (B, C, H, W) -> (B, 1536, H/8, W/8); ``forward_head(pre_logits=True)``
    flattens it: (B, num_features), num_features = 1536·⌊H/8⌋·⌊W/8⌋ (24,576 at 32×32).
    """

    def __init__(
        self,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 32,
        num_classes: int = 10,
        rule: str = "softhebb",
        t_inv: tuple[float, float, float] = (1.0, 0.65, 0.25),
        widths: tuple[int, int, int] = (96, 384, 1536),
        drop_rate: float = 0.5,
        init_radius: float | None = None,
        whiten_patch: int = 0,
        whiten_eps: float = 0.1,
    ) -> None:
        super().__init__()
        img_size = to_size(img_size)
        if min(img_size) < 8:
            raise ValueError(f"hebb_softhebb_c3 needs inputs of at least 8×8 pixels, got {img_size}")
        if whiten_patch and whiten_patch // 2 >= min(img_size):
            raise ValueError(f"whiten_patch {whiten_patch} is too large for {img_size} images")
        self.model_args = dict(in_chans=in_chans, img_size=list(img_size), num_classes=num_classes,
                               rule=rule, t_inv=list(t_inv), widths=list(widths), drop_rate=drop_rate,
                               init_radius=init_radius, whiten_patch=whiten_patch,
                               whiten_eps=whiten_eps)

        def params(i: int) -> dict[str, float]:
            return {"init_radius": init_radius, **({"t_inv": t_inv[i]} if rule == "softhebb" else {})}

        c1, c2, c3 = widths
        self.stem = (PatchWhitening(in_chans, whiten_patch, whiten_eps) if whiten_patch
                     else nn.Identity())
        self.blocks = nn.ModuleList([
            nn.Sequential(
                nn.BatchNorm2d(in_chans, affine=False),
                HebbConv2d(in_chans, c1, 5, padding=2, padding_mode="reflect", rule=rule, **params(0)),
                Triangle(0.7),
                nn.MaxPool2d(4, 2, 1),
            ),
            nn.Sequential(
                nn.BatchNorm2d(c1, affine=False),
                HebbConv2d(c1, c2, 3, padding=1, padding_mode="reflect", rule=rule, **params(1)),
                Triangle(1.4),
                nn.MaxPool2d(4, 2, 1),
            ),
            nn.Sequential(
                nn.BatchNorm2d(c2, affine=False),
                HebbConv2d(c2, c3, 3, padding=1, padding_mode="reflect", rule=rule, **params(2)),
                Triangle(1.0),
                nn.AvgPool2d(2),
            ),
        ])
        c, h, w = feature_shape(nn.Sequential(self.stem, *self.blocks), in_chans, img_size)
        self.num_features = c * h * w
        self.drop_rate = drop_rate
        self.head_drop = nn.Dropout(drop_rate)
        self.reset_classifier(num_classes)
        self.default_cfg = _cfg(in_chans, img_size, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return self.forward_blocks(x)


def _cfg(in_chans: int, img_size: tuple[int, int], num_classes: int) -> dict[str, Any]:
    return {
        "architecture": "hebb_softhebb_c3",
        "input_size": (in_chans, *img_size),
        "num_classes": num_classes,
        # Pixels only scaled to [0, 1]: the affine-free BatchNorm in front of conv1 normalises.
        "mean": (0.0,) * in_chans,
        "std": (1.0,) * in_chans,
        "hebb": {"rule": "softhebb", "lr": [0.08, 0.005, 0.01], "batch_size": 10, "epochs": 1,
                 "min_steps": 1000,  # small collections repeat: the rule needs steps to converge
                 "mode": "consecutive"},
        "embedding": {"layer": "features", "pool": "flatten"},
    }


@register_model
def hebb_softhebb_c3(pretrained: bool = False, **kwargs: Any) -> SoftHebbC3:
    """SoftHebb's CIFAR-10 net; rule softhebb, 1 Hebbian epoch at batch 10."""
    if pretrained:
        raise ValueError("hebb_softhebb_c3 has no pretrained weights; train one with `hebbret pretrain`")
    return SoftHebbC3(**model_kwargs(kwargs))
