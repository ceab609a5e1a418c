"""Does "converged" mean the features stopped improving? The convergence signal of
``hebbret.pretraining.convergence`` against kNN on held-out *training* rows, along one run.

    python tools/bench_convergence.py fashion-mnist-mini --steps 1600
    python tools/bench_convergence.py /tmp/elpv-split/train --in-chans 1 --img-size 32
    python tools/bench_convergence.py /tmp/cifar10-5k/train --init-radius 25

One Hebbian run of ``--model`` (default ``hebb_softhebb_c3``; batch 10, the backbone's learning rates) through
``hebbian_step``, measuring the drift every 20 steps exactly as ``pretrain`` logs it; at steps
25, 50, 100, ... it embeds the training split with the backbone's descriptor, scores kNN (k=20)
of a stratified 20% of the training rows against the other 80% (no test image is read), and
computes the convergence verdict from the log so far. A row is "still improving" when the next
milestone's kNN is ≥ 1 point higher. Rows go to ``--results`` (JSON) and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common.results import ResultsFile, markdown_table, publish
from hebbret.data import held_out, make_loader, native_format, open_dataset
from hebbret.embed import Extractor
from hebbret.eval import knn_classify, nearest_rows
from hebbret.models import create_model
from hebbret.pretraining import (
    CONVERGED_SPEED,
    MEASURE_EVERY,
    convergence,
    directions,
    hebbian_step,
    weight_drift,
)

log = logging.getLogger("bench_convergence")
REPO = Path(__file__).resolve().parent.parent
SECTION = "convergence-signal"  # docs/results.md markers
MILESTONES = (25, 50, 100, 200, 400, 800, 1600, 3200)
THRESHOLDS = np.round(np.arange(0.05, 1.0001, 0.05), 2)  # speed-ratio thresholds swept


def run(data: str, steps: int, in_chans: int | None, img_size: int | None, init_radius: float,
        model_name: str = "hebb_softhebb_c3", model_kwargs: dict[str, Any] | None = None,
        milestones: tuple[int, ...] = MILESTONES, seed: int = 0) -> list[dict[str, Any]]:
    torch.manual_seed(seed)
    chans, native = native_format(data)
    chans, size = in_chans or chans, img_size or (native[0] if native else 32)
    model = create_model(model_name, in_chans=chans, img_size=size, init_radius=init_radius,
                         **(model_kwargs or {}))
    cfg = model.default_cfg
    ds = open_dataset(data, "train", chans, size, mean=cfg["mean"], std=cfg["std"])
    layers = model.hebb_layers()
    opt = torch.optim.SGD([{"params": [la.weight], "lr": lr}
                           for la, lr in zip(layers, model.hebbian_lrs(), strict=True)])
    labels = ds.labels
    val = held_out(labels)
    marks = [directions(la.weight.detach()) for la in layers]
    rows: list[dict[str, Any]] = []
    out = []
    step, epoch, previous = 0, 0, None
    while step < steps:
        for batch in make_loader(ds, cfg["hebb"]["batch_size"], seed=seed, epoch=epoch):
            hebbian_step(model, opt, batch.images, list(range(len(layers))))
            step += 1
            row: dict[str, Any] = {"step": step, "layers": [{"layer": i} for i in range(len(layers))]}
            if step % MEASURE_EVERY == 0:
                for s, la, mark in zip(row["layers"], layers, marks, strict=True):
                    s["drift"] = float(weight_drift(la.weight.detach(), mark))
            rows.append(row)
            if step in milestones:
                knn, neighbours = knn_score(model, ds, labels, val)
                out.append({"step": step, "knn": knn, "convergence": convergence(rows, model),
                            "same_neighbours": None if previous is None else
                            float((neighbours[:, :, None] == previous[:, None, :]).any(2).mean())})
                previous = neighbours
                log.info("step %d: kNN %.2f, speed ratios %s, neighbours kept %s", step,
                         out[-1]["knn"], [la["speed_ratio"]
                                          for la in out[-1]["convergence"]["layers"]],
                         out[-1]["same_neighbours"])
            if step >= steps:
                break
        epoch += 1
    return out


def knn_score(model: torch.nn.Module, ds: Any, labels: np.ndarray, val: np.ndarray
              ) -> tuple[float, np.ndarray]:
    """kNN top-1 (k=20) of the held-out training rows against the others, and their 20 nearest
    rows (n_val, 20): what share of them a later milestone keeps says, without labels, how much
    the features still change."""
    model.eval()
    with torch.inference_mode():
        feats = torch.cat([Extractor(model)(b.images) for b in make_loader(ds, 256)]).numpy()
    model.train()
    knn = knn_classify(feats[~val], labels[~val], feats[val], labels[val], ks=[20])["k"][20]["top1"]
    neighbours = np.concatenate([j.numpy() for _, _, j in nearest_rows(feats[val], feats[~val], 20)])
    return knn, neighbours


def verdicts(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any], bool | None, float]]:
    """Per milestone of every run: (run, milestone, whether a later milestone's kNN is ≥ 1 point
    higher (None for the last), the slowest-converging layer's speed ratio)."""
    out = []
    for key, r in doc["stages"].get("convergence", {}).items():
        for i, m in enumerate(r["milestones"]):
            later = [n["knn"] for n in r["milestones"][i + 1:]]
            out.append((key, m, max(later) >= m["knn"] + 1.0 if later else None,
                        max(la["speed_ratio"] for la in m["convergence"]["layers"])))
    return out


def threshold_sweep(doc: dict[str, Any]) -> tuple[str, float]:
    """How each threshold on the speed ratio would judge the milestones whose future is known:
    "premature" (converged, yet a later step gains ≥ 1 point), "late" (not converged, yet no
    later step gains). The choice: the middle of the thresholds with no premature verdict and
    the fewest late ones. Returns the markdown table and the choice."""
    known = [(imp, worst) for _, _, imp, worst in verdicts(doc) if imp is not None]
    counts = [(float(t), sum(imp and w <= t for imp, w in known),
               sum(not imp and w > t for imp, w in known)) for t in THRESHOLDS]
    safe = [c for c in counts if c[1] == 0]
    fewest = min(c[2] for c in safe)
    best = [c[0] for c in safe if c[2] == fewest]
    choice = round((min(best) + max(best)) / 2, 3)
    rows = [[f"{t:.2f}", pre, late, len(known) - pre - late] for t, pre, late in counts]
    return markdown_table(["threshold", "premature", "late", "right"], rows), choice


def table(doc: dict[str, Any]) -> str:
    body = [[key, m["step"], m["knn"], "–" if imp is None else ("yes" if imp else "no"),
             " / ".join(f"{la['speed_ratio']:.2f}" for la in m["convergence"]["layers"]),
             "yes" if worst <= CONVERGED_SPEED else "no",
             "–" if m.get("same_neighbours") is None else f"{m['same_neighbours']:.2f}"]
            for key, m, imp, worst in verdicts(doc)]
    return markdown_table(["run", "step", "kNN (held-out train rows)",
                           "a later step gains ≥ 1 point", "speed ratio per layer",
                           f"converged (all ≤ {CONVERGED_SPEED:g})",
                           "neighbours kept since the last step"], body)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="an image folder (labeled) or fashion-mnist-mini")
    p.add_argument("--name", help="row name (default: the data's)")
    p.add_argument("--steps", type=int, default=1600)
    p.add_argument("--in-chans", type=int)
    p.add_argument("--img-size", type=int)
    p.add_argument("--init-radius", type=float, default=5.0)
    p.add_argument("--milestones", type=int, nargs="+", default=MILESTONES,
                   help="steps at which kNN and the verdict are measured")
    p.add_argument("--model", default="hebb_softhebb_c3")
    p.add_argument("--model-kwargs", type=json.loads, default={}, help="e.g. '{\"widths\": "
                   "[24, 96, 384, 1536]}' (the quarter-width c4 `hebbret run` picks on a CPU)")
    p.add_argument("--results", type=Path, default=REPO / "tools" / "results" / "convergence.json")
    p.add_argument("--table", type=Path, help="also write the table to this markdown file")
    p.add_argument("--readme", type=Path, help=f"also put the table(s) in this file's "
                   f"'{SECTION}' section (docs/results.md)")
    p.add_argument("--table-only", action="store_true", help="run nothing: print (and write) the "
                   "table of the rows already in --results")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    res = ResultsFile(args.results, ["python", *sys.argv], REPO)
    name = args.name or f"{Path(args.data).name or args.data}, radius {args.init_radius:g}"
    if not args.table_only and not res.get("convergence", name):
        res.put("convergence", name, {"milestones": run(args.data, args.steps, args.in_chans,
                                                         args.img_size, args.init_radius,
                                                         args.model, args.model_kwargs,
                                                         tuple(args.milestones))})
    sweep, choice = threshold_sweep(res.doc)
    text = (table(res.doc) + "\nEvery threshold on the slowest layer's speed ratio against the "
            "milestones above whose future is known:\n\n" + sweep + f"\nChoice (the middle of "
            f"the thresholds with no premature verdict and the fewest late ones): {choice:g}; "
            f"in force: CONVERGED_SPEED = {CONVERGED_SPEED:g}.\n")
    if args.table:
        args.table.write_text(text)
    publish(text, args.readme, SECTION)


if __name__ == "__main__":
    main()
