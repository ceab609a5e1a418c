"""Which descriptor? kNN and mAP of several descriptors of one run dir, on held-out *training*
rows only: a stratified, seeded 20% of the training split as queries against the other 80%.

    hebbret pretrain /tmp/cifar10-5k/train --img-size 32 --steps 500 \\
        --model-kwargs '{"init_radius": 5}' --out runs/c3-c5k
    python tools/bench_descriptors.py runs/c3-c5k /tmp/cifar10-5k/train --name "cifar10-5k, c3"

Each descriptor is ``layer:pool[:grid[:gem_p]]`` (default: the list below). The backbone runs
once per batch; every descriptor is pooled from the same maps. Rows go to ``--results``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hebbret.data import make_loader, open_dataset
from hebbret.embed import Extractor
from hebbret.evaluate import knn_classify, retrieval_metrics
from hebbret.report import markdown_table
from hebbret.runs import EmbeddingSpec, load_run
from hebbret.runtime import ResultsFile

log = logging.getLogger("bench_descriptors")
REPO = Path(__file__).resolve().parent.parent
DESCRIPTORS = ("features:flatten", "features:avg:2", "features:avg", "features:max",
               "features:gem:1:3", "block1+features:gem:1:3")


def parse(text: str) -> EmbeddingSpec:
    parts = text.split(":")
    return EmbeddingSpec(parts[0], parts[1], float(parts[3]) if len(parts) > 3 else 3.0,
                         int(parts[2]) if len(parts) > 2 else 1)


def held_out(labels: np.ndarray, fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """A stratified, seeded boolean mask of ``fraction`` of every class."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        mask[rng.permutation(rows)[: int(fraction * len(rows))]] = True
    return mask


def score(run: str, data: str, specs: list[str]) -> dict[str, Any]:
    model, card = load_run(run)
    ds = open_dataset(data, "train", card.input.in_chans, card.input.img_size,
                      mean=card.input.mean, std=card.input.std)
    extractors = {s: Extractor(model, parse(s)) for s in specs}
    feats: dict[str, list[torch.Tensor]] = {s: [] for s in specs}
    with torch.inference_mode():
        for batch in make_loader(ds, 256):
            for s, ex in extractors.items():
                feats[s].append(ex(batch.images))
    labels = ds.labels
    val = held_out(labels)
    out = {}
    for s in specs:
        x = torch.cat(feats[s]).numpy()
        knn = knn_classify(x[~val], labels[~val], x[val], labels[val], ks=[20])["k"][20]["top1"]
        ret = retrieval_metrics(x[~val], labels[~val], x[val], labels[val], ks=[100])["mAP"]
        out[s] = {"dim": int(x.shape[1]), "knn_top1": knn, "mAP": ret}
        log.info("%s: %s", s, out[s])
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run dir")
    p.add_argument("data", help="its training folder")
    p.add_argument("--name", help="row name (default: the run dir's)")
    p.add_argument("--descriptors", nargs="+", default=list(DESCRIPTORS))
    p.add_argument("--results", type=Path, default=REPO / "tools" / "results" / "descriptors.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    res = ResultsFile(args.results, ["python", *sys.argv], REPO)
    name = args.name or Path(args.run).name
    if not res.get("descriptors", name):
        res.put("descriptors", name, {"run": args.run, "scores": score(args.run, args.data,
                                                                       args.descriptors)})
    body = [[key, spec, r["dim"], r["knn_top1"], r["mAP"]]
            for key, row in res.doc["stages"]["descriptors"].items()
            for spec, r in row["scores"].items()]
    sys.stdout.write(markdown_table(["run", "descriptor (layer:pool[:grid[:p]])", "dim",
                                     "kNN top-1 (held-out train rows)", "mAP"], body))


if __name__ == "__main__":
    main()
