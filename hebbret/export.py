"""A run's embedding extractor for use outside hebbret: ``torch.export`` (pt2), ONNX, or
safetensors with the model card in its metadata."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import torch

from ._io import atomic_path
from .config import EXPORT_FORMATS
from .embed import Extractor, embedding_spec
from .models import create_model
from .runs import EmbeddingSpec, ModelCard, load_run

log = logging.getLogger(__name__)




def export_extractor(run: str | os.PathLike, fmt: str = "pt2", out: str | os.PathLike | None = None,
                     layer: str | None = None, pool: str | None = None,
                     gem_p: float | None = None, grid: int | None = None,
                     project: bool = True, flip: str | None = None) -> Path:
    """Export the embedding extractor of a run dir (descriptor arguments as
    :func:`extract_embeddings`).

    ``pt2``: ``torch.export`` program with a dynamic batch dimension, loadable without hebbret
    (``torch.export.load(path).module()(x)``); ``safetensors``: weights with the model card and
    embedding spec in the file's metadata (:func:`load_extractor`); ``onnx``: needs ``onnx``.
    Inputs are normalised images (B, C, H, W) as ``model.json`` -> ``input`` describes.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {fmt!r}")
    model, card = load_run(run)
    desc = embedding_spec(card, layer, pool, gem_p, grid, project, flip)
    extractor = Extractor(model, desc).eval()
    out = Path(out) if out is not None else Path(run) / f"extractor.{fmt}"
    spec = card.input
    example = torch.zeros(2, spec.in_chans, *spec.img_size)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
        header = {"model_card": json.dumps(card.to_json()), "embedding": json.dumps(asdict(desc))}
        with atomic_path(out) as tmp:
            save_file(tensors, str(tmp), metadata=header)
    elif fmt == "pt2":
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        program = torch.export.export(extractor, (example,), dynamic_shapes=({0: batch},))
        with atomic_path(out) as tmp:
            torch.export.save(program, str(tmp))
    else:
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise ValueError("ONNX export needs the onnx package: pip install onnx") from None
        with atomic_path(out) as tmp:
            torch.onnx.export(extractor, (example,), str(tmp), input_names=["images"],
                              output_names=["embeddings"], dynamo=False,
                              dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}})
    log.info("exported %s (%s, layer %s, pool %s, PCA dims %d)", out, fmt, desc.layer, desc.pool,
             desc.dims)
    return out


def load_extractor(path: str | os.PathLike) -> Extractor:
    """Rebuild an :class:`Extractor` from a ``safetensors`` export."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    if "model_card" not in header:
        raise ValueError(f"{path} is not a hebbret extractor export (no model_card metadata)")
    card = ModelCard.from_json(json.loads(header["model_card"]))
    model = create_model(card.architecture, **card.model_args)
    model.load_state_dict(load_file(str(path)))
    if "embedding" in header:
        desc = EmbeddingSpec(**json.loads(header["embedding"]))
    else:  # exports before GeM: layer and pool only
        desc = EmbeddingSpec(header["layer"], header["pool"])
    return Extractor(model.eval(), desc).eval()
