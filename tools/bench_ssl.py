"""Hebbian against self-supervised backprop at the same wall clock (issue 23): every row
trained on the same unlabeled training images for each budget, then scored the same way.

    pip install 'hebbret[ssl]'
    python tools/bench_ssl.py data/cifar10-5k --budgets 60 180 600 1800 \\
        --readme docs/results.md --plot docs/ssl.png

FOLDER: train/ and test/ class folders, or one labeled folder (split 80/20 per class as `hebbret
run` splits it, into WORK/data). Inputs as `hebbret run` chooses them (size, SoftHebb net, its
widths; ``--model`` / ``--img-size`` win). ``--rows``: METHOD or METHOD:MODEL (MODEL: default the
chosen net). ``hebbian``: `hebbret pretrain` with `hebbret run`'s recipe (the default config's
steps and init radius), stopped at the budget when it has not finished before; a budget above
the one it finished within reuses that run. ``simclr`` / ``byol``: `hebbret ssl` for the budget
(lightly's CIFAR-10 settings, see SSLConfig) on the same net from its default initialisation,
or on ``resnet18_small``. Budgets count the wall clock of the training steps, data loading
included, as both trainers do; a run stops after the step that reaches its budget, so its clock
(in the table) can pass the budget by one step. Each training is its own child process (wall,
CPU seconds and peak RSS from wait4); each run is scored like `hebbret run` scores its rows:
test images embedded through the run's own descriptor against the training images; kNN top-1
(k=20), mAP, linear probe, the best frozen few-label protocol (20 labels per class, mean of 3 seeds).

Rows go to ``--results`` keyed (collection, budget, method, model); a row already there is
skipped unless ``--force``. The crossover, per collection: the smallest budget at which an SSL
row beats the Hebbian row of that budget on kNN, and on mAP.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from _common.child import run_child
from _common.plots import curves_png
from _common.results import ResultsFile, markdown_table, publish
from hebbret._io import read_json, write_json
from hebbret.artifacts import TRAIN_STATE, is_complete
from hebbret.config import FewShotConfig, RunConfig, load_run_config
from hebbret.data import survey
from hebbret.eval.embeddings import evaluate_embeddings
from hebbret.pipeline import Inputs, choose_inputs, resolve_data
from hebbret.runs import read_card
from hebbret.runtime import pick_device
from hebbret.ssl import backprop_kwargs
from hebbret.stages import BackboneStages

log = logging.getLogger("bench_ssl")
REPO = Path(__file__).resolve().parent.parent
SECTION = "ssl-results"  # docs/results.md markers
ROWS = ("hebbian", "simclr", "byol", "simclr:resnet18_small", "byol:resnet18_small")
BUDGETS = (60.0, 180.0, 600.0, 1800.0)
METRICS = (("knn_top1", "kNN top-1 (k=20)"), ("mAP", "mAP"))
FINISHED = 0.95  # a Hebbian run whose clock stayed below this share of its budget finished


class Bench:
    """One collection: its inputs, its split, and the rows trained and scored on them."""

    def __init__(self, folder: Path, work: Path, name: str, model: str | None,
                 img_size: int | None) -> None:
        self.cfg: RunConfig = load_run_config(None, data=str(folder), model=model,
                                              img_size=img_size, out=str(work))
        self.work, self.name = work, name
        self.train, self.test, _ = resolve_data(self.cfg, work)
        self.inputs: Inputs = choose_inputs(self.cfg, survey(self.train[0]),
                                            pick_device(self.cfg.device).type)
        log.info("%s: %s", name, "; ".join(self.inputs.reasons))

    def command(self, method: str, model: str, budget: float, out: Path) -> list[str]:
        """The `hebbret pretrain` / `hebbret ssl` command of a row (run as ``python -m``)."""
        cfg, inputs = self.cfg, self.inputs
        common = ["--img-size", str(inputs.img_size), "--in-chans", str(inputs.in_chans),
                  "--budget-s", f"{budget:g}", "--seed", str(cfg.seed), "--descriptor-dims",
                  str(cfg.descriptor_dims), "--out", str(out), "--quiet"]
        if method == "hebbian":
            steps = ["--steps", str(cfg.pretrain_steps)] if cfg.pretrain_steps else []
            return ["pretrain", self.train[0], "--model", model, *steps, "--model-kwargs",
                    json.dumps(inputs.model_kwargs), *common]
        kwargs = backprop_kwargs(inputs.model_kwargs) if model == inputs.model else {}
        return ["ssl", self.train[0], "--method", method, "--model", model,
                *(["--model-kwargs", json.dumps(kwargs)] if kwargs else []), *common]

    def fit(self, method: str, model: str, budget: float, fresh: bool = False
              ) -> dict[str, Any]:
        """Train a row in a child process unless its run dir is complete (a killed one
        resumes; ``fresh``: trained again); its cost (``train.json``) and what its card says."""
        stages = BackboneStages(self.work / f"{budget:g}s-{method}-{model}")
        if fresh:
            shutil.rmtree(stages.root, ignore_errors=True)
        cost_path = stages.root / "train.json"
        if not (is_complete(stages.run) and cost_path.exists()):
            args = self.command(method, model, budget, stages.run)
            resume = ["--resume"] if (stages.run / TRAIN_STATE).exists() else []
            cost = run_child([sys.executable, "-m", "hebbret", *args, *resume])
            write_json(cost_path, {**cost, "train_command": shlex.join(["hebbret", *args]),
                                   "resumed": bool(resume)})  # cost: the last child only
        t = read_card(stages.run).training
        clock = t["wall_seconds"] if t["kind"] == "hebbian" else t["train_seconds"]
        return {**read_json(cost_path), "steps": t["steps"], "images_seen": t["images_seen"],
                "clock_s": clock, **self.score(stages)}

    def score(self, stages: BackboneStages) -> dict[str, Any]:
        """`hebbret run`'s scores of a run: all labels, and the best frozen few-label protocol."""
        cfg = self.cfg
        for name, (source, split) in (("train", self.train), ("test", self.test)):
            stages.embed(name, source, split=split, batch_size=cfg.embed_batch_size)
        row = stages.all_label_scores(cfg.knn_k, cfg.retrieval_k, cfg.linear_max_iter, cfg.seed)
        fcfg = FewShotConfig(protocols=[p for p in cfg.protocols if p != "full"],
                             labels_per_class=cfg.labels_per_class,
                             label_fraction=cfg.label_fraction, seeds=cfg.seeds, knn_k=cfg.knn_k)
        few = {p: r["top1"] for p, r in evaluate_embeddings(stages.emb("train"),
                                                            stages.emb("test"), fcfg).items()}
        best = max(few, key=lambda p: few[p]["mean"])
        return {**row, "fewshot": few, "fewshot_best": best, "fewshot_mean": few[best]["mean"],
                "fewshot_std": few[best]["std"]}


def finished_before(res: ResultsFile, stage: str, model: str, budget: float) -> str | None:
    """The key of a Hebbian row at a smaller budget that finished its recipe inside it."""
    for key, r in sorted((res.doc["stages"].get(stage) or {}).items(),
                         key=lambda kv: kv[1]["budget_s"]):
        if (r["method"], r["model"]) == ("hebbian", model) and r["budget_s"] < budget and \
                r["clock_s"] < FINISHED * r["budget_s"] and res.get(stage, key):
            return key
    return None


def run_rows(bench: Bench, res: ResultsFile, rows: list[str], budgets: list[float],
             force: bool = False) -> None:
    for budget in sorted(budgets):
        for spec in rows:
            method, _, model = spec.partition(":")
            model = model or bench.inputs.model
            key = f"{budget:g} s | {method} | {model}"
            if res.get(bench.name, key):
                log.info("%s / %s: already in %s", bench.name, key, res.path)
                continue
            same = finished_before(res, bench.name, model, budget) if method == "hebbian" else None
            if same:  # the same seeded recipe, finished well inside a smaller budget
                row = {**res.get(bench.name, same), "same_run_as": same}
            else:
                row = bench.fit(method, model, budget, fresh=force)
            res.put(bench.name, key, {**row, "collection": bench.name, "budget_s": budget,
                                      "method": method, "model": model})


def crossover(rows: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The smallest budget where an SSL row beats that budget's Hebbian row on ``metric``."""
    for budget in sorted({r["budget_s"] for r in rows}):
        at = [r for r in rows if r["budget_s"] == budget]
        hebb = [r[metric] for r in at if r["method"] == "hebbian"]
        wins = [r for r in at if r["method"] != "hebbian" and hebb and r[metric] > max(hebb)]
        if wins:
            best = max(wins, key=lambda r: r[metric])
            return {"budget_s": budget, "row": f"{best['method']}, {best['model']}",
                    "value": best[metric], "hebbian": max(hebb)}
    return None


def crossover_line(rows: list[dict[str, Any]]) -> str:
    budgets = sorted({r["budget_s"] for r in rows})
    parts = []
    for metric, label in METRICS:
        c = crossover(rows, metric)
        parts.append(f"{label}: " + (
            f"from {c['budget_s']:g} s ({c['row']} {c['value']:.2f} vs Hebbian {c['hebbian']:.2f})"
            if c else f"no SSL row beats Hebbian at any budget measured "
                      f"({', '.join(f'{b:g}' for b in budgets)} s)"))
    return "**Crossover** (smallest budget where an SSL row beats Hebbian): " + "; ".join(parts)


def table(doc: dict[str, Any]) -> str:
    """Per collection: every row, the crossover, the machine and the commands."""
    out = []
    for name, found in doc.get("stages", {}).items():
        rows = sorted(found.values(), key=lambda r: (r["budget_s"], r["method"] != "hebbian",
                                                     r["method"], r["model"]))
        body = [[f"{r['budget_s']:g}", r["method"], r["model"], r["steps"], r["images_seen"],
                 r["clock_s"], f"{r['cpu_s']:.0f}" + (" (resumed: its last child)" if
                                                      r.get("resumed") else ""),
                 r["peak_rss_gib"], r["dim"], r["knn_top1"], r["mAP"],
                 r["linear_top1"], f"{r['fewshot_mean']:.2f} ± {r['fewshot_std']:.2f} "
                 f"({r['fewshot_best']})"] for r in rows]
        out.append(f"**{name}** (`{rows[0]['machine']}`, seed 0)\n\n" + markdown_table(
            ["budget s", "method", "model", "steps", "images seen", "training clock s",
             "child CPU s", "child peak GiB", "dim", "kNN top-1", "mAP", "linear probe",
             "few-label best (3 seeds)"],
            body, align="rll" + "r" * 10))
        out.append(crossover_line(rows) + "\n")
        out.append("Commands: `" + rows[0]["command"] + "`; the trainings: " + "; ".join(
            f"`{r['train_command']}`" for r in rows if "same_run_as" not in r) + "\n")
    return "\n".join(out)


def plot(doc: dict[str, Any], path: Path) -> None:
    """kNN and mAP against the budget, one line per (method, model), a row per collection."""
    panels = []
    for name, found in doc.get("stages", {}).items():
        for metric, label in METRICS:
            series: dict[str, tuple[list[float], list[float]]] = {}
            for r in sorted(found.values(), key=lambda r: r["budget_s"]):
                xs, ys = series.setdefault(f"{r['method']}, {r['model']}", ([], []))
                xs.append(r["budget_s"])
                ys.append(r[metric])
            panels.append((name, label, series))
    curves_png(panels, path, "training budget (s of wall clock)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, nargs="?", help="train/ and test/, or a labeled folder")
    p.add_argument("--name", help="the collection's name in the table (default: the folder's)")
    p.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS), metavar="S")
    p.add_argument("--rows", nargs="+", default=list(ROWS), metavar="METHOD[:MODEL]")
    p.add_argument("--model", help="the Hebbian net (default: the one `hebbret run` chooses)")
    p.add_argument("--img-size", type=int, help="default: as `hebbret run` chooses")
    p.add_argument("--work", type=Path, default=Path("runs/bench-ssl"))
    p.add_argument("--results", type=Path, default=REPO / "tools" / "results" / "ssl.json")
    p.add_argument("--readme", type=Path, help=f"also put the tables in this file's '{SECTION}' "
                   f"section (docs/results.md)")
    p.add_argument("--plot", type=Path, help="also draw kNN and mAP against the budget here")
    p.add_argument("--force", action="store_true", help="rerun rows already in --results")
    p.add_argument("--table-only", action="store_true", help="run nothing: tables and plot of "
                   "the rows already in --results")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    res = ResultsFile(args.results, ["python", *sys.argv], REPO)
    if not args.table_only:
        if args.folder is None:
            p.error("give the FOLDER to train on (or --table-only)")
        for spec in args.rows:
            if spec.partition(":")[0] not in ("hebbian", "simclr", "byol"):
                p.error(f"--rows {spec}: the method is hebbian, simclr or byol")
        name = args.name or args.folder.resolve().name
        bench = Bench(args.folder, args.work / name, name, args.model, args.img_size)
        if args.force:
            res.force(name)
        run_rows(bench, res, args.rows, args.budgets, args.force)
    publish(table(res.doc), args.readme, SECTION)
    if args.plot and res.doc["stages"]:
        plot(res.doc, args.plot)


if __name__ == "__main__":
    main()
