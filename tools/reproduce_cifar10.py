"""Reproduce the Hebbian bars on CIFAR-10 with hebbret's own library calls.

    python tools/reproduce_cifar10.py DATA_ROOT [--stage softhebb retrieval few-labels layers speed]

DATA_ROOT holds ``train/<class>/`` and ``test/<class>/`` (or ``cifar10/train`` ...), the layout of
``cifar10-jpeg.tar.gz``. Stages:

- ``softhebb``: hebb_softhebb_c3, 1 Hebbian epoch (rule softhebb, batch 10), frozen flattened
  features cached as float16, SoftHebb's linear readout; the same on the random-init network.
- ``retrieval``: kNN and retrieval metrics on those features (train = database, test =
  queries), in 24,576-d and after PCA to 256-d (a FAISS ``PCA256,L2norm,Flat`` index whose
  PCA is fitted in torch; L2norm so that the index ranks exactly as the cosine metrics do),
  and on the backbone's own (pooled) descriptor.
- ``few-labels``: FastHebb's semi-supervised protocol (``finetune --mode full``) at 1/5/10% of
  the labels, 3 seeds, Hebbian-pretrained vs from scratch.
- ``protocols``: the frozen-feature few-label protocols of ``hebbret fewshot`` (knn, linear,
  propagate over a FAISS kNN graph of all 50,000 training images) on the stage-1 features,
  Hebbian and random init, at the same budgets and on the same labeled subsets.
- ``layers``: per-layer kNN and linear-probe top-1 of hebb_fasthebb_6l (hpca, swta).
- ``speed``: a full Hebbian epoch with bf16 autocast (+ its readout, to check accuracy), and
  fp32 Hebbian / bf16 Hebbian / backprop step rates interleaved in one process, projected to
  an epoch; the fp32 epoch itself is the ``softhebb`` stage's run.

Every finished unit of work is merged into ``--results`` (JSON) at once, with the command line,
git commit, machine and wall times, and is skipped when it is already there: the stages can be
completed across several runs (``--force`` redoes a stage, replacing each result as its new
one is written). ``--budgets``, ``--seeds`` and
``--archs`` narrow the few-label cells a session runs; ``--skip ARCH/BUDGET`` records a cell as
too slow for this CPU. With ``--readme docs/results.md`` its CIFAR-10 section is rewritten
from the JSON after each stage by ``tools/_common/cifar10_tables.py`` (``--readme-only --readme
docs/results.md`` just rewrites it); without it, no file but the JSON is touched. The stages
live in ``tools/_common/cifar10_{runs,features,labels}.py``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from _common import cifar10_tables
from _common.cifar10_features import stage_layers, stage_retrieval, stage_softhebb, stage_speed
from _common.cifar10_labels import stage_few_labels, stage_protocols, stage_variants
from _common.cifar10_runs import FEW_LABEL_ARCHS, STAGES, Settings, find_data_root
from _common.results import ResultsFile

__all__ = ["STAGES", "Settings", "main"]
log = logging.getLogger("reproduce_cifar10")
REPO = Path(__file__).resolve().parent.parent


STAGE_FUNCS: dict[str, Callable[[Path, Path, ResultsFile, Settings], None]] = {
    "softhebb": stage_softhebb, "retrieval": stage_retrieval, "few-labels": stage_few_labels,
    "protocols": stage_protocols, "variants": stage_variants, "layers": stage_layers,
    "speed": stage_speed,
}


def main(argv: list[str] | None = None, settings: Settings | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_root", nargs="?", help="folder with train/ and test/")
    parser.add_argument("--stage", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--work", default="runs/cifar10-repro", help="runs and cached features")
    parser.add_argument("--results", default=str(REPO / "tools/results/cifar10.json"))
    parser.add_argument("--readme", default="",
                        help="also rewrite this file's CIFAR-10 section from the results "
                             "(tools/_common/cifar10_tables.py), e.g. docs/results.md")
    parser.add_argument("--force", action="store_true", help="redo the chosen stages")
    parser.add_argument("--readme-only", action="store_true")
    parser.add_argument("--skip", nargs="*", metavar="ARCH/BUDGET",
                        help="few-label cells to record as too slow for this CPU, e.g. "
                             "c3-softhebb/0.1 c3-scratch/0.1")
    parser.add_argument("--budgets", type=float, nargs="+",
                        help="few-label fractions to run now (default 0.01 0.05 0.1)")
    parser.add_argument("--seeds", type=int, nargs="+", help="few-label seeds (default 0 1 2)")
    parser.add_argument("--archs", nargs="+", choices=list(FEW_LABEL_ARCHS),
                        help="few-label backbones to run now (default all)")
    parser.add_argument("--protocols", nargs="+", choices=["knn", "linear", "propagate"],
                        help="with --force --stage protocols: the 3b protocols to re-run; the "
                             "others' cells are kept from the existing rows (default all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = settings or Settings()
    for name in ("skip", "budgets", "seeds", "archs", "protocols"):  # given on the command line
        if getattr(args, name) is not None:
            setattr(settings, name, tuple(getattr(args, name)))
    res = ResultsFile(args.results, ["python", "tools/reproduce_cifar10.py", *argv], REPO,
                      header={"dataset": "CIFAR-10 (JPEG q75 copy)"})
    write_readme = cifar10_tables.write_readme if args.readme else None
    if not args.readme_only:
        if not args.data_root:
            parser.error("DATA_ROOT is required unless --readme-only")
        data = find_data_root(Path(args.data_root))
        torch.manual_seed(0)
        for stage in args.stage:
            if args.force:
                res.force(stage)
            log.info("stage %s", stage)
            STAGE_FUNCS[stage](Path(args.work), data, res, settings)
            if write_readme:
                write_readme(Path(args.readme), res.doc)
    if write_readme:
        write_readme(Path(args.readme), res.doc)
    elif args.readme_only:
        parser.error("--readme-only needs --readme FILE")
    return res.doc


if __name__ == "__main__":
    main()
