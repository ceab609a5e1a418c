"""Collections at the size people have them: `hebbret run` on real 300 px photos at several
input sizes, the same images at 4× their size, and the thumbnails' default job.

    pip install --no-deps elpv-dataset && python tools/elpv_folder.py /tmp/elpv
    python tools/bench_resolution.py --elpv /tmp/elpv --cifar10-5k /tmp/cifar10-5k \\
        --work runs/bench-resolution --table docs/resolution.md

Stages (``--stage``; every finished row is kept in ``--results`` and skipped when there):

- ``solar``: `hebbret run ELPV` with the inputs it chooses itself (``auto``), then with
  ``--img-size`` 32 / 64 / 96 / 128 (each with the backbone and descriptor `run` picks for that
  size): Hebbian vs random init, kNN, mAP, the best few-label protocol (3 seeds), embedding
  dim, peak memory (the child process's max RSS), pretrain and embed seconds, wall.
- ``upscaled``: the CIFAR-10 5k folder (``tools/subset_folder.py``) at its own 32 px and
  written out at 128 px (bilinear), both through `hebbret run` with its defaults.
- ``default``: `hebbret run` on the embedded Fashion-MNIST subset.

Each `hebbret run` is its own child process (``python -m hebbret run ... --quiet``), so its
peak memory is its own; the machine is stated in every row.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from PIL import Image

from _common.child import run_child
from _common.results import ResultsFile, markdown_table, publish
from hebbret._io import read_json
from hebbret.data import scan_image_folder
from hebbret.pretraining import CONVERGED_SPEED, convergence, training_log
from hebbret.runs import load_run

log = logging.getLogger("bench_resolution")
REPO = Path(__file__).resolve().parent.parent
SECTION = "resolution"  # docs/results.md markers
STAGES = ("solar", "upscaled", "default")
SIZES = (32, 64, 96, 128)


def hebbret_run(args: list[str], out: Path) -> dict[str, Any]:
    """`hebbret run ARGS --out OUT --quiet` in a child process: its report's numbers, wall
    seconds and peak RSS (GiB, from wait4: this child alone)."""
    cmd = [sys.executable, "-m", "hebbret", "run", *args, "--out", str(out), "--quiet"]
    cost = run_child(cmd)
    results = read_json(out / "report" / "results.json")
    row: dict[str, Any] = {"run_dir": str(out), "run_command": "hebbret run " + " ".join(args),
                           "wall_s": cost["wall_s"], "peak_rss_gib": cost["peak_rss_gib"],
                           "inputs": results["inputs"]}
    for name, r in results["rows"].items():
        best = max(r["fewshot"].items(), key=lambda kv: kv[1]["mean"])
        row[name] = {"knn_top1": r["knn_top1"], "mAP": r["mAP"], "linear_top1": r["linear_top1"],
                     "fewshot_best": best[0], "fewshot_mean": best[1]["mean"],
                     "fewshot_std": best[1]["std"], "dim": r["dim"],
                     "pretrain_s": r["seconds"].get("pretrain"), "embed_s": r["seconds"].get("embed")}
    row["converged"] = converged(out / "hebbian" / "pretrain")
    return row


def converged(run: Path) -> dict[str, Any] | None:
    """The convergence verdict of a run dir, recomputed from its log (the current rule)."""
    if not (run / "log.jsonl").exists():
        return None
    conv = convergence(training_log(run), load_run(run)[0])
    return {"converged": conv["converged"],
            "speed_ratio": [la["speed_ratio"] for la in conv["layers"]]}


def upscale_folder(src: Path, dst: Path, size: int) -> Path:
    """``dst``: every image of ``src`` resized to size×size (bilinear), same layout; reused
    when complete (a marker file written last)."""
    if (dst / ".complete").exists():
        return dst
    for split in ("train", "test"):
        items, _ = scan_image_folder(src / split)
        for it in items:
            target = (dst / split / it.path).with_suffix(".png")
            target.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(src / split / it.path) as img:
                img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR).save(target)
    (dst / ".complete").write_text("")
    return dst


def conv_cell(row: dict[str, Any]) -> str:
    """The Hebbian run's verdict, recomputed from its log when the run dir is still there."""
    found = converged(Path(row["run_dir"]) / "hebbian" / "pretrain") or row.get("converged")
    if not found:
        return "–"
    speeds = [v for v in found["speed_ratio"] if v is not None]
    verdict = bool(speeds) and max(speeds) <= CONVERGED_SPEED  # the threshold in force now
    return f"{'yes' if verdict else 'no'} ({' / '.join(f'{v:.2f}' for v in speeds)})"


def table(doc: dict[str, Any]) -> str:
    """The markdown tables of every finished row."""
    stages = doc.get("stages", {})
    out = []
    for stage, rows in stages.items():
        body = []
        for key, r in rows.items():
            h, rnd = r["hebbian"], r["random"]
            inputs = r["inputs"]
            body.append([key, f"{inputs['img_size']} px, {inputs['model'].removeprefix('hebb_')}",
                         h["dim"], h["knn_top1"], rnd["knn_top1"], h["mAP"], rnd["mAP"],
                         f"{h['fewshot_mean']:.2f} ({h['fewshot_best']})",
                         f"{rnd['fewshot_mean']:.2f} ({rnd['fewshot_best']})",
                         r["peak_rss_gib"], h["pretrain_s"], h["embed_s"], r["wall_s"],
                         conv_cell(r)])
        out.append(f"**{stage}** (`{next(iter(rows.values()))['machine']}`)\n\n" + markdown_table(
            ["row", "inputs", "dim", "kNN H", "kNN R", "mAP H", "mAP R", "few-label H",
             "few-label R", "peak GiB", "pretrain s", "embed s", "wall s",
             "converged (speed ratio per layer)"], body))
        out.append("Commands: " + "; ".join(f"`{k}`: `{r['run_command']}` (commit "
                                            f"{r.get('git_commit', '?')})"
                                            for k, r in rows.items()) + "\n")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--elpv", type=Path, help="tools/elpv_folder.py's output")
    p.add_argument("--cifar10-5k", type=Path, help="tools/subset_folder.py's output")
    p.add_argument("--work", type=Path, default=Path("runs/bench-resolution"))
    p.add_argument("--stage", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--results", type=Path, default=REPO / "tools" / "results" / "resolution.json")
    p.add_argument("--table", type=Path, help="also write the tables to this markdown file")
    p.add_argument("--readme", type=Path, help=f"also put the table(s) in this file's "
                   f"'{SECTION}' section (docs/results.md)")
    p.add_argument("--table-only", action="store_true", help="run nothing: print (and write) the "
                   "tables of the rows already in --results")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    res = ResultsFile(args.results, ["python", *sys.argv], REPO)

    def once(stage: str, key: str, run_args: list[str], out: Path) -> None:
        if res.get(stage, key):
            log.info("%s/%s: already in %s", stage, key, args.results)
            return
        res.put(stage, key, hebbret_run(run_args, out))

    if args.table_only:
        args.stage = []
    if "solar" in args.stage:
        if args.elpv is None:
            p.error("--stage solar needs --elpv (tools/elpv_folder.py)")
        once("solar", "auto", [str(args.elpv)], args.work / "solar-auto")
        chosen = res.get("solar", "auto")["inputs"]["img_size"]
        for size in args.sizes:
            if size != chosen:  # the auto row is that size's run
                once("solar", f"{size} px", [str(args.elpv), "--img-size", str(size)],
                     args.work / f"solar-{size}")
    if "upscaled" in args.stage:
        if args.cifar10_5k is None:
            p.error("--stage upscaled needs --cifar10-5k (tools/subset_folder.py)")
        once("upscaled", "32 px (own size)", [str(args.cifar10_5k)], args.work / "cifar5k-32")
        big = upscale_folder(args.cifar10_5k, args.work / "cifar10-5k-128", 128)
        once("upscaled", "128 px (4× upscaled)", [str(big)], args.work / "cifar5k-128")
    if "default" in args.stage:
        once("default", "fashion-mnist-mini", [], args.work / "default")
    text = table(res.doc)
    if args.table:
        args.table.write_text(text)
    publish(text, args.readme, SECTION)


if __name__ == "__main__":
    main()
