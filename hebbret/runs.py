"""Run dirs: a trained backbone as ``model.safetensors`` + ``model.json`` (docs/design.md §6).

The model card is a :class:`ModelCard`; every reader goes through it. Cards written before it
had a ``card_version`` (version 0) load unchanged.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from ._io import atomic_path, read_json, sha256_file, write_json
from .artifacts import MODEL_CARD, WEIGHTS
from .models import HebbNet, create_model
from .version import __version__

CARD_VERSION = 1
GEM_P = 3.0  # GeM's exponent unless a descriptor says otherwise (cirtorch's starting value)


@dataclass(frozen=True)
class InputSpec:
    """What the backbone expects: channels, (H, W), and the per-channel normalisation."""

    in_chans: int
    img_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class EmbeddingSpec:
    """The descriptor: which activations are the embedding, and how they are pooled.

    ``layer``: 'features' or 'block<i>', several joined by '+'; ``pool``: flatten | avg | max |
    gem (``gem_p``: its exponent) over each cell of a ``grid``×``grid`` partition of the map;
    ``flip``: none | h (the image and its mirror image) | hv (also upside down, and both):
    each view's pooled vector L2-normalised, then summed, so the descriptor does not change
    when the image is flipped; ``dims`` > 0: then projected to that many dimensions by the
    backbone's fitted :class:`~hebbret.models.DescriptorPCA` (0: not projected)."""

    layer: str = "features"
    pool: str = "flatten"
    gem_p: float = GEM_P
    grid: int = 1
    dims: int = 0
    flip: str = "none"


@dataclass(frozen=True)
class ModelCard:
    """``model.json``: everything needed to rebuild, feed and trust a run dir's weights."""

    architecture: str
    model_args: dict[str, Any]
    input: InputSpec
    num_features: int
    embedding: EmbeddingSpec
    weights_sha256: str
    rule: str | None = None
    hebbret_version: str = __version__
    training: dict[str, Any] = field(default_factory=dict)  # how the weights were made
    card_version: int = CARD_VERSION

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ModelCard:
        obj = dict(obj)
        spec = obj.pop("input")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise ValueError(f"unknown model card fields {unknown} (card version "
                             f"{obj.get('card_version', 0)}; this hebbret reads up to "
                             f"{CARD_VERSION}): upgrade hebbret")
        return cls(input=InputSpec(spec["in_chans"], tuple(spec["img_size"]), tuple(spec["mean"]),
                                   tuple(spec["std"])),
                   embedding=EmbeddingSpec(**obj.pop("embedding", {})),
                   card_version=obj.pop("card_version", 0), **obj)

    def to_json(self) -> dict[str, Any]:
        obj = dataclasses.asdict(self)
        obj["input"]["img_size"] = list(self.input.img_size)
        obj["input"]["mean"], obj["input"]["std"] = list(self.input.mean), list(self.input.std)
        return obj

    @property
    def trained_classes(self) -> list[str] | None:
        """The class names of a fine-tuned classifier head, in its output order."""
        return self.training.get("classes")


def save_run(model: HebbNet, out: str | os.PathLike, training: dict[str, Any] | None = None
             ) -> ModelCard:
    """Write the weights, then the model card (last: it marks the dir complete) into run dir
    ``out``; ``training`` (rule settings, summary, parent run, ...) is stored as given."""
    out = Path(out)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "hebbret": __version__})
    cfg = model.default_cfg
    card = ModelCard(
        architecture=cfg["architecture"], model_args=model.model_args,
        rule=model.model_args.get("rule"),
        input=InputSpec(cfg["input_size"][0], tuple(cfg["input_size"][1:]), tuple(cfg["mean"]),
                        tuple(cfg["std"])),
        num_features=model.num_features,
        embedding=EmbeddingSpec(**{**cfg["embedding"], "dims": model.descriptor_pca.dims}),
        weights_sha256=sha256_file(out / WEIGHTS), training=training or {})
    write_json(out / MODEL_CARD, card.to_json())
    return card


def read_card(run: str | os.PathLike) -> ModelCard:
    """The model card of a run dir; names the missing file when it is not one."""
    run = Path(run)
    for name in (MODEL_CARD, WEIGHTS):
        if not (run / name).is_file():
            raise FileNotFoundError(f"{run} is not a hebbret run dir: {name} is missing")
    try:
        return ModelCard.from_json(read_json(run / MODEL_CARD))
    except (KeyError, TypeError) as e:
        raise ValueError(f"{run / MODEL_CARD} is not a hebbret model card ({e!r} missing or "
                         f"wrong)") from None


def load_run(run: str | os.PathLike, verify: bool = True) -> tuple[HebbNet, ModelCard]:
    """Rebuild the backbone of a run dir, checking the weights against the card's sha256."""
    run = Path(run)
    card = read_card(run)
    if verify:
        digest = sha256_file(run / WEIGHTS)
        if digest != card.weights_sha256:
            raise ValueError(f"{run / WEIGHTS} does not match its model card (sha256 {digest[:12]} "
                             f"!= {card.weights_sha256[:12]}): the run dir is damaged or mixed")
    model = create_model(card.architecture, **card.model_args)
    model.load_state_dict(load_file(str(run / WEIGHTS)))
    # the card's descriptor is the one its PCA was fitted on, whatever the code's default now
    model.default_cfg["embedding"] = {k: v for k, v in dataclasses.asdict(card.embedding).items()
                                      if k != "dims"}
    return model.eval(), card
