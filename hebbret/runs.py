"""Run dirs: a trained backbone as ``model.safetensors`` + ``model.json`` (docs/design.md §6)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from ._io import atomic_path, read_json, sha256_file, write_json
from .models import HebbNet, create_model
from .version import __version__

WEIGHTS, MODEL_CARD = "model.safetensors", "model.json"


def save_run(model: HebbNet, out: str | os.PathLike, **info: Any) -> dict[str, Any]:
    """Write the weights and the model card into run dir ``out``; returns the card.

    ``info`` (rule, training summary, parent run, ...) is stored in the card as given.
    """
    out = Path(out)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "hebbret": __version__})
    cfg = model.default_cfg
    card = {
        "architecture": cfg["architecture"],
        "model_args": model.model_args,
        "rule": model.model_args.get("rule"),
        "input": {"in_chans": cfg["input_size"][0], "img_size": list(cfg["input_size"][1:]),
                  "mean": list(cfg["mean"]), "std": list(cfg["std"])},
        "num_features": model.num_features,
        "embedding": cfg["embedding"],
        "hebbret_version": __version__,
        "weights_sha256": sha256_file(out / WEIGHTS),
        **info,
    }
    write_json(out / MODEL_CARD, card)
    return card


def read_card(run: str | os.PathLike) -> dict[str, Any]:
    """The model card of a run dir; names the missing file when it is not one."""
    run = Path(run)
    for name in (MODEL_CARD, WEIGHTS):
        if not (run / name).is_file():
            raise FileNotFoundError(f"{run} is not a hebbret run dir: {name} is missing")
    return read_json(run / MODEL_CARD)


def load_run(run: str | os.PathLike, verify: bool = True) -> tuple[HebbNet, dict[str, Any]]:
    """Rebuild the backbone of a run dir, checking the weights against the card's sha256."""
    run = Path(run)
    card = read_card(run)
    if verify:
        digest = sha256_file(run / WEIGHTS)
        if digest != card["weights_sha256"]:
            raise ValueError(f"{run / WEIGHTS} does not match its model card (sha256 {digest[:12]} "
                             f"!= {card['weights_sha256'][:12]}): the run dir is damaged or mixed")
    model = create_model(card["architecture"], **card["model_args"])
    model.load_state_dict(load_file(str(run / WEIGHTS)))
    return model.eval(), card
