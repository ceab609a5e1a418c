"""One backbone's stages in one working dir: pretrain -> embed -> index -> frozen evaluation.

The main job (:mod:`hebbret.pipeline`), ``tools/eval_fashion_mnist.py`` and
``tools/reproduce_cifar10.py`` all run their backbones through :class:`BackboneStages`, so a
stage is finished, reused and timed the same way everywhere: a stage whose output dir is
complete (:func:`hebbret.artifacts.is_complete`, the marker its writer writes last) is reused
and not timed; a killed pretraining resumes from its checkpoint.

Layout of ``ROOT``: ``<run>/`` (the run dir; ``run_name``), ``pretrain.json`` (how the run was
made: wall time, images, the load average at its end), ``emb_<name>/``, ``index*/``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ._io import read_json, write_json
from .artifacts import META, TRAIN_STATE, is_complete
from .config import FewShotConfig
from .embed import extract_embeddings
from .eval.embeddings import evaluate, evaluate_embeddings
from .finetuning import evaluate_full
from .index import build_index
from .pretraining import pretrain
from .runs import read_card
from .runtime import load_average, timed

log = logging.getLogger(__name__)


class BackboneStages:
    """The stages of one backbone under ``root``; ``seconds`` collects the wall time of every
    stage this object actually ran (reused stages are not timed)."""

    def __init__(self, root: str | os.PathLike, run_name: str = "pretrain", device: str = "auto",
                 quiet: bool = False, digits: int = 1) -> None:
        self.root = Path(root)
        self.run = self.root / run_name
        self.device, self.quiet, self.digits = device, quiet, digits
        self.seconds: dict[str, float] = {}  # per stage: pretrain, embed (all), index, eval
        self.embed_seconds: dict[str, float] = {}  # per embeddings dir

    def emb(self, name: str) -> Path:
        return self.root / f"emb_{name}"

    def pretrain(self, data: str, trainer: Callable[..., Any] = pretrain, **options: Any
                 ) -> dict[str, Any]:
        """Pretrain (``trainer(data, **options)``: ``hebbret.pretrain``, or another trainer with
        its arguments, e.g. ``hebbret.ssl.train_ssl``) into the run dir unless complete;
        resumes a killed run. Returns the record of how the run was made (``pretrain.json``
        beside it), with ``reused`` set when this call did not train."""
        record_path = self.root / "pretrain.json"
        if is_complete(self.run):
            record = read_json(record_path) if record_path.exists() else {
                "train_seconds": read_card(self.run).training.get("train_seconds")}
            return {**record, "reused": True}
        options = {"device": self.device, "quiet": self.quiet, **options}
        with timed(self.seconds, "pretrain", self.digits):
            trainer(data, out=str(self.run), resume=(self.run / TRAIN_STATE).exists(), **options)
        training = read_card(self.run).training
        record = {"wall_s": self.seconds["pretrain"], "train_seconds": training["train_seconds"],
                  "images": training["images_seen"],
                  "skipped_files": len(training.get("skipped_files", [])),
                  # above the thread count: something else shared the CPU, times are inflated
                  "load_avg_15m_at_end": (load_average() or [None] * 3)[2]}
        write_json(record_path, record)
        return {**record, "reused": False}

    def embed(self, name: str, data: str, **options: Any) -> Path:
        """Embed ``data`` with the run's backbone into ``emb_<name>`` unless complete."""
        out = self.emb(name)
        if not is_complete(out):
            spent: dict[str, float] = {}
            with timed(spent, "embed", self.digits):
                extract_embeddings(self.run, data, out, device=self.device, quiet=self.quiet,
                                   **options)
            self.seconds["embed"] = round(self.seconds.get("embed", 0.0) + spent["embed"],
                                          self.digits)
            self.embed_seconds[name] = spent["embed"]
            record_path = self.root / "pretrain.json"
            if record_path.exists():  # keep the embedding time with the run's record
                write_json(record_path, {**read_json(record_path),
                                         f"embed_{name}_s": spent["embed"]})
        return out

    def index(self, emb_name: str = "train", name: str = "index", **options: Any) -> Path:
        """A FAISS index over ``emb_<emb_name>`` in ``<name>/`` unless complete."""
        out = self.root / name
        if not is_complete(out):
            with timed(self.seconds, "index", self.digits):
                build_index(self.emb(emb_name), out, **options)
        return out

    def all_label_scores(self, knn_k: int = 20, retrieval_k: int = 100, linear_max_iter: int = 100,
                         seed: int = 0, train: str = "train", test: str = "test"
                         ) -> dict[str, Any]:
        """kNN, linear probe and retrieval with every label: ``emb_<train>`` is the database
        / training set, ``emb_<test>`` the queries / test set."""
        a, b = str(self.emb(train)), str(self.emb(test))
        with timed(self.seconds, "eval", self.digits):
            knn = evaluate("knn", a, b, ks=[knn_k])
            lin = evaluate("linear", a, b, max_iter=linear_max_iter, seed=seed)
            ret = evaluate("retrieval", a, b, ks=[1, retrieval_k])
        k = max(knn["k"])  # k capped at the database size
        return {"knn_top1": knn["k"][k]["top1"], "linear_top1": lin["top1"],
                "linear_penalty": lin["penalty"], "mAP": ret["mAP"],
                f"P@{retrieval_k}": ret["P@k"][max(ret["P@k"])], "Recall@1": ret["Recall@k"][1],
                "dim": read_json(self.emb(train) / META)["dim"]}


def run_fewshot(run: str | os.PathLike, data: str, test_data: str, out: str | os.PathLike,
                cfg: FewShotConfig, split: str = "train", test_split: str = "test",
                data_root: str | None = None, finetune_options: dict[str, Any] | None = None,
                device: str = "auto", quiet: bool = False) -> dict[str, Any]:
    """Every protocol of ``cfg`` for the backbone of run dir ``run``; writes ``OUT/fewshot.json``.

    Embeds ``data`` (the collection, labeled) and ``test_data`` into ``OUT/emb_train`` and
    ``OUT/emb_test`` (reused when complete), runs the frozen protocols on them, and
    :func:`evaluate_full` for ``full``.
    """
    out = Path(out)
    embs = {}
    for name, source, sp in (("train", data, split), ("test", test_data, test_split)):
        embs[name] = out / f"emb_{name}"
        if not is_complete(embs[name]):
            extract_embeddings(run, source, embs[name], split=sp, data_root=data_root,
                               device=device, quiet=quiet)
    protocols = evaluate_embeddings(embs["train"], embs["test"], cfg)
    if "full" in cfg.protocols:
        protocols["full"] = evaluate_full(run, data, test_data, out, cfg, split, test_split,
                                          data_root, finetune_options, device, quiet)
    results = {"config": asdict(cfg), "run": str(run), "protocols": protocols}
    write_json(out / "fewshot.json", results)
    return results
