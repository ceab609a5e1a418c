"""hebbret: Hebbian (FastHebb) feature learning for image retrieval.

Train backbones without labels (:func:`pretrain`), fine-tune them on few labels
(:func:`finetune`), embed images (:func:`extract_embeddings`), or run everything
(:func:`run_pipeline`). Stage modules: ``hebbret.data``, ``hebbret.hebb``, ``hebbret.models``,
``hebbret.pretraining``, ``hebbret.finetuning``, ``hebbret.embed``, ``hebbret.index``,
``hebbret.eval``, ``hebbret.pipeline`` (docs/design.md).

``import hebbret`` imports nothing heavy: the stages (and torch, timm, FAISS) are imported when one
of the names below is first used. ``import hebbret.models`` (or any stage, or
:func:`create_model`) registers the backbones with timm, after which
``timm.create_model("hebb_softhebb_c3")`` works.
"""

from __future__ import annotations

import importlib
from typing import Any

from .version import __version__

_LAZY = {  # public name -> the module that defines it
    "create_model": "models",
    "PretrainConfig": "config", "FinetuneConfig": "config", "FewShotConfig": "config",
    "RunConfig": "config", "load_config": "config",
    "pretrain": "pretraining",
    "finetune": "finetuning",
    "extract_embeddings": "embed", "load_embeddings": "embed",
    "build_index": "index", "search_index": "index", "search_by_image": "search",
    "evaluate": "eval.embeddings",
    "run_pipeline": "pipeline",
    "load_run": "runs", "save_run": "runs",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name == "models":  # the subpackage, imported on first use like the stages
        return importlib.import_module(".models", __name__)
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
