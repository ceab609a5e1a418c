"""The FastHebb 6-layer network (Lagani et al.), as a timm backbone."""

from __future__ import annotations

from typing import Any

from timm.models import register_model
from torch import Tensor, nn

from ..hebb.layers import HebbConv2d, HebbLinear
from ._base import HebbNet, feature_shape, model_kwargs, to_size

__all__ = ["FastHebb6L"]


class FastHebb6L(HebbNet):
    """conv5×5 96 → maxpool2 → BN; conv3×3 128 → BN; conv3×3 192 → maxpool2 → BN;
    conv3×3 256 → BN; fc 4096 → BN; dropout → fc classifier. ReLU after every Hebbian layer,
    no padding (as in FastHebb), so inputs must be at least 24×24.

    ``forward_features``: (B, C, H, W) -> (B, 4096); ``num_features`` = 4096.
    """

    def __init__(
        self,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 32,
        num_classes: int = 10,
        rule: str = "hpca",
        widths: tuple[int, int, int, int, int] = (96, 128, 192, 256, 4096),
        drop_rate: float = 0.5,
    ) -> None:
        super().__init__()
        img_size = to_size(img_size)
        if min(img_size) < 24:
            raise ValueError(f"hebb_fasthebb_6l needs inputs of at least 24×24 pixels, got {img_size}")
        self.model_args = dict(in_chans=in_chans, img_size=list(img_size), num_classes=num_classes,
                               rule=rule, widths=list(widths), drop_rate=drop_rate)
        c1, c2, c3, c4, f5 = widths

        def conv(cin: int, cout: int, k: int) -> HebbConv2d:
            return HebbConv2d(cin, cout, k, rule=rule)

        convs = nn.ModuleList([
            nn.Sequential(conv(in_chans, c1, 5), nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(c1)),
            nn.Sequential(conv(c1, c2, 3), nn.ReLU(), nn.BatchNorm2d(c2)),
            nn.Sequential(conv(c2, c3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(c3)),
            nn.Sequential(conv(c3, c4, 3), nn.ReLU(), nn.BatchNorm2d(c4)),
        ])
        c, h, w = feature_shape(nn.Sequential(*convs), in_chans, img_size)
        fc = nn.Sequential(nn.Flatten(1), HebbLinear(c * h * w, f5, rule=rule), nn.ReLU(),
                           nn.BatchNorm1d(f5))
        self.stem = nn.Identity()
        self.blocks = nn.ModuleList([*convs, fc])
        self.num_features = f5
        self.drop_rate = drop_rate
        self.head_drop = nn.Dropout(drop_rate)
        self.reset_classifier(num_classes)
        self.default_cfg = _cfg(in_chans, img_size, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return self.forward_blocks(x)


def _cfg(in_chans: int, img_size: tuple[int, int], num_classes: int) -> dict[str, Any]:
    return {
        "architecture": "hebb_fasthebb_6l",
        "input_size": (in_chans, *img_size),
        "num_classes": num_classes,
        "mean": (0.5,) * in_chans,
        "std": (0.25,) * in_chans,
        # hpca (Sanger) is stable only for lr·‖x‖² ≲ 1: on BN-normalised inputs ‖x‖² ≈ fan-in, so
        # its rates shrink with depth (lr 1e-2 everywhere diverges on CIFAR-10 within 6 steps)
        "hebb": {"rule": "hpca", "lr": [1e-2] * 5, "lr_by_rule": {"hpca": [1e-2, 1e-3, 1e-3, 5e-4, 4e-4]},
                 "batch_size": 64, "epochs": 1,
                 "mode": "consecutive"},
        "embedding": {"layer": "features", "pool": "flatten"},
    }


@register_model
def hebb_fasthebb_6l(pretrained: bool = False, **kwargs: Any) -> FastHebb6L:
    """FastHebb's 6-layer net; rules hpca or swta, lr 1e-2, batch 64."""
    if pretrained:
        raise ValueError("hebb_fasthebb_6l has no pretrained weights; train one with `hebbret pretrain`")
    return FastHebb6L(**model_kwargs(kwargs))
