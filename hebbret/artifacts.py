"""The file names of every artifact dir, defined once, and when such a dir counts as finished.

A run dir (``pretrain``/``finetune``) holds ``model.safetensors`` + ``model.json`` (the model
card, :class:`hebbret.runs.ModelCard`), ``config.json``, ``log.jsonl`` and, while Hebbian
training runs, ``state.pt``. An embeddings dir holds ``embeddings.npy`` + ``items.jsonl`` +
``meta.json``; an index dir ``index.faiss`` + ``items.jsonl`` + ``meta.json`` (+
``index.ivfdata`` when on disk), or, once updated, generations ``gen-NNNNNN/`` of those
files named by a pointer file ``CURRENT`` (docs/design.md); a packed cache
``images-*.npy`` + ``items.jsonl`` + ``meta.json`` (docs/design.md §6). Every writer writes its
dir's marker — the card or ``meta.json`` — last, atomically, so a dir with its marker is
complete and a killed writer leaves one without it.
"""

from __future__ import annotations

import os
from pathlib import Path

WEIGHTS = "model.safetensors"
MODEL_CARD = "model.json"
RUN_CONFIG = "config.json"
TRAIN_LOG = "log.jsonl"
TRAIN_STATE = "state.pt"
EMBEDDINGS = "embeddings.npy"
ITEMS = "items.jsonl"
META = "meta.json"
INDEX = "index.faiss"
IVFDATA = "index.ivfdata"  # inverted lists of an on-disk index, memory-mapped by search
CURRENT = "CURRENT"  # an updated index dir: names the generation dir (gen-NNNNNN) readers open
LISTING = "listing.npy"  # a generation: int64 (N, 2) size and mtime_ns of each row's file

EMBEDDING_FILES = (EMBEDDINGS, ITEMS, META)
INDEX_FILES = (INDEX, ITEMS, META)
COMPLETION_MARKERS = (MODEL_CARD, META)  # written last by every writer


def is_complete(artifact_dir: str | os.PathLike) -> bool:
    """Whether a run, embeddings, index or cache dir was written to the end (its marker —
    ``model.json`` or ``meta.json`` — exists; every writer writes it last; an updated index:
    ``CURRENT``, written once the generation it names is complete)."""
    return any((Path(artifact_dir) / name).is_file() for name in (*COMPLETION_MARKERS, CURRENT))
