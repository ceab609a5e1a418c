"""Which descriptor? kNN and mAP of several descriptors of one run dir, on held-out *training*
rows only: a stratified, seeded 20% of the training split as queries against the other 80%.

    hebbret pretrain /tmp/cifar10-5k/train --img-size 32 --steps 500 \\
        --model-kwargs '{"init_radius": 5}' --out runs/c3-c5k
    python tools/bench_descriptors.py runs/c3-c5k /tmp/cifar10-5k/train --name "cifar10-5k, c3"

Each descriptor is ``layer:pool[:grid[:gem_p]]``, optionally followed by ``!h`` (the mirror view
summed, as the descriptor's ``flip``), ``^<q>`` (each value x replaced by sign(x)·|x|^q: q = 0.5
is the signed square root, power normalisation) and ``@pca<d>[w<a>]``: then L2-normalised,
centred and projected on its ``d`` leading principal directions, fitted on the 80% (as
pretraining fits :class:`hebbret.models.DescriptorPCA` on training images), each scaled by
variance^(-a/2) (a = 1: PCA-whitening; 0, the default: none). The backbone runs once
per batch; every descriptor is pooled from the same maps. Rows go to ``--results``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common.results import ResultsFile, markdown_table
from hebbret.data import held_out, make_loader, open_dataset
from hebbret.embed import Extractor
from hebbret.eval import knn_classify, retrieval_metrics
from hebbret.models._base import fit_pca
from hebbret.runs import EmbeddingSpec, load_run

log = logging.getLogger("bench_descriptors")
REPO = Path(__file__).resolve().parent.parent
DESCRIPTORS = ("features:flatten", "features:avg:2", "features:avg", "features:max",
               "features:gem:1:3", "block1+features:gem:1:3")
PCA_VARIANTS = ("@pca256", "@pca1024", "@pca1024w0.5", "@pca1024w1")  # of the first descriptor


def parse(text: str) -> tuple[EmbeddingSpec, int, float, float]:
    """``layer:pool[:grid[:gem_p]][!flip][^q][@pca<d>[w<a>]]`` -> (spec, PCA dims (0: none),
    whitening a, power q (1: none)); ``!h`` / ``!hv``: the views summed as the descriptor's
    ``flip`` does."""
    text, _, pca = text.partition("@pca")
    text, _, power = text.partition("^")
    text, _, flip = text.partition("!")
    parts = text.split(":")
    dims, _, alpha = pca.partition("w")
    return (EmbeddingSpec(parts[0], parts[1], float(parts[3]) if len(parts) > 3 else 3.0,
                          int(parts[2]) if len(parts) > 2 else 1, flip=flip or "none"),
            int(dims or 0), float(alpha or 0), float(power or 1))


def pooled_part(text: str) -> str:
    """The part of a descriptor the backbone computes: without ``^q`` and ``@pca``."""
    return text.partition("@")[0].partition("^")[0]


def project(x: np.ndarray, fit_rows: np.ndarray, dims: int, alpha: float) -> np.ndarray:
    """Rows of ``x`` L2-normalised, centred and projected on the leading ``dims`` principal
    directions of ``x[fit_rows]``, each scaled by variance^(-alpha/2)."""
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    dims = min(dims, int(fit_rows.sum()) - 1, x.shape[1])
    mean, comps, var = fit_pca(np.ascontiguousarray(x[fit_rows]), dims)
    scale = np.maximum(var, 1e-5 * var.max()) ** (-alpha / 2)
    return (x - mean) @ (comps * scale[:, None]).T


def score(run: str, data: str, specs: list[str]) -> dict[str, Any]:
    model, card = load_run(run)
    ds = open_dataset(data, "train", card.input.in_chans, card.input.img_size,
                      mean=card.input.mean, std=card.input.std)
    pooled = {pooled_part(s) for s in specs}
    extractors = {s: Extractor(model, parse(s)[0]) for s in pooled}
    feats: dict[str, list[torch.Tensor]] = {s: [] for s in pooled}
    with torch.inference_mode():
        for batch in make_loader(ds, 256):
            for s, ex in extractors.items():
                feats[s].append(ex(batch.images))
    labels = ds.labels
    val = held_out(labels)
    out = {}
    for s in specs:
        x = torch.cat(feats[pooled_part(s)]).numpy()
        _, dims, alpha, power = parse(s)
        if power != 1:
            x = np.sign(x) * np.abs(x) ** power
        if dims:
            x = project(x, ~val, dims, alpha)
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
    p.add_argument("--descriptors", nargs="+", help="default: the list above, then the PCA "
                   "variants of the first (" + ", ".join(PCA_VARIANTS) + ")")
    p.add_argument("--results", type=Path, default=REPO / "tools" / "results" / "descriptors.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    res = ResultsFile(args.results, ["python", *sys.argv], REPO)
    name = args.name or Path(args.run).name
    specs = args.descriptors or [*DESCRIPTORS, *(DESCRIPTORS[0] + v for v in PCA_VARIANTS)]
    if not res.get("descriptors", name):
        res.put("descriptors", name, {"run": args.run, "scores": score(args.run, args.data,
                                                                       specs)})
    body = [[key, spec, r["dim"], r["knn_top1"], r["mAP"]]
            for key, row in res.doc["stages"]["descriptors"].items()
            for spec, r in row["scores"].items()]
    sys.stdout.write(markdown_table(["run", "descriptor (layer:pool[:grid[:p]][!flip][^q][@pca<d>[w<a>]])",
                                     "dim",
                                     "kNN top-1 (held-out train rows)", "mAP"], body))


if __name__ == "__main__":
    main()
