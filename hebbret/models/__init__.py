"""Backbones, registered with timm when this package is imported: ``import hebbret.models`` then
``timm.create_model("hebb_softhebb_c3")``."""

from __future__ import annotations

from typing import Any

import timm

from ..config import BACKPROP_MODEL_NAMES, MODEL_NAMES
from ._base import HebbNet, PatchWhitening, Triangle
from .fasthebb import FastHebb6L, hebb_fasthebb_6l
from .resnet import ResNetSmall, resnet18_small
from .softhebb import FAMILIES, SoftHebbNet, hebb_softhebb_c3, hebb_softhebb_c4, hebb_softhebb_c5


def create_model(name: str, **kwargs: Any) -> HebbNet:
    """Build a hebbret backbone by name through timm's registry (a Hebbian net, or a standard
    one that ``hebbret ssl`` trains)."""
    if name not in MODEL_NAMES + BACKPROP_MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; hebbret backbones: "
                         f"{', '.join(MODEL_NAMES + BACKPROP_MODEL_NAMES)}")
    return timm.create_model(name, **kwargs)


__all__ = ["FAMILIES", "MODEL_NAMES", "FastHebb6L", "HebbNet", "PatchWhitening", "ResNetSmall",
           "SoftHebbNet", "Triangle", "create_model", "hebb_fasthebb_6l", "hebb_softhebb_c3",
           "hebb_softhebb_c4", "hebb_softhebb_c5", "resnet18_small"]
