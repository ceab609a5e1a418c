"""hebbret's Hebbian step side by side with SoftHebb's own demo step, on the same CIFAR-10 batches.

    python tools/bench_softhebb.py --softhebb PATH/TO/SoftHebb/demo.py --readme docs/results.md
    python tools/bench_softhebb.py --rounds 1 --batches 10 256   # hebbret's side only

``--softhebb``: SoftHebb's demo file (NeuromorphicComputing/SoftHebb ``demo.py``, not part of
this repository), imported from its path in a child process that builds its ``DeepSoftHebb`` and
times its training step as its main loop runs it (``zero_grad``, the forward pass under
``no_grad``, ``TensorLRSGD.step``, ``WeightNormDependentLR.step``). hebbret's side times
``hebbian_step`` with the ``ok`` guard as ``pretrain`` runs it (hebb_softhebb_c3, channels-last),
eager and compiled (hebbret/compiling.py), fp32 and bf16. Every row runs in its own process,
the rows of a round alternate, each round starts new processes; a row's number is its best
round. Both read the same real images (the first of ``--data``, decoded by hebbret's loader,
saved once to a .npy). Each process also measures the fp32 GEMM rate (torch.mm) and its step's
fraction of it (4·N·K·D flops per Hebbian layer); timing samples that other processes
contended are dropped and retaken (tools/_common/timing.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import _common.hebb_steps as hebb_steps
from _common.hebb_steps import gemm_gflops
from _common.results import fill_section, machine_info, markdown_table
from _common.side_by_side import MODEL, essential_gflop, hebbret_step, softhebb_step
from _common.timing import QuietWaiter, timing_samples
from hebbret._io import write_json
from hebbret.runtime import load_average

log = logging.getLogger("bench_softhebb")
REPO = Path(__file__).resolve().parent.parent
# (side, precision, compiled) per row; SoftHebb's demo trains in fp32, eager
ROWS = (("softhebb", "fp32", False), ("hebbret", "fp32", False), ("hebbret", "fp32", True),
        ("hebbret", "bf16", False), ("hebbret", "bf16", True))
TARGETS = {"batch10_ratio_min": 1.5, "batch256_gemm_fraction_min": 0.8}


def real_batches(data: Path, images: int, out: Path) -> Path:
    """The first ``images`` images of the folder ``data`` as (N, 3, 32, 32) float32 in ``out``,
    decoded and normalised by hebbret's loader."""
    from hebbret.data import make_loader, open_dataset
    from hebbret.models import create_model

    cfg = create_model(MODEL).default_cfg
    dataset = open_dataset(data, in_chans=3, img_size=32, mean=cfg["mean"], std=cfg["std"],
                           cache=False)
    if len(dataset) < images:
        raise SystemExit(f"{data} has {len(dataset)} images; {images} needed")
    parts = [b.images for b in make_loader(dataset, 256, seed=None, rows=range(images))]
    np.save(out, torch.cat(parts).numpy().astype(np.float32))
    return out


def child(args: argparse.Namespace) -> None:
    """One row, one round: the step's seconds over the batches and this process's GEMM rate."""
    data = torch.from_numpy(np.load(args.npy))
    n = min(len(data) // args.batch, args.steps or max(4, 300 // args.batch))
    batches = [data[i * args.batch:(i + 1) * args.batch].contiguous() for i in range(n)]
    if args.child == "softhebb":
        step, report = softhebb_step(args.softhebb)
    else:
        step, report = hebbret_step(args.precision, args.compiled)
        batches = [b.contiguous(memory_format=torch.channels_last) for b in batches]
    t0 = time.perf_counter()
    step(batches[0])  # compiles, when compiled
    first_s = time.perf_counter() - t0
    wait = QuietWaiter(args.max_wait)
    timing = timing_samples(lambda: [step(b) for b in batches], args.repeats, 1, wait)
    hebb_steps.wait_quiet = wait
    gemm = max(gemm_gflops((2048,), 3)["mm"].values())
    print(json.dumps({"step_s": timing["min"] / n, "step_median_s": timing["median"] / n,
                      "steps": n, "first_call_s": first_s, "gemm_gflops": gemm,
                      "timing": timing, "compile": report()}))


def run_row(args: argparse.Namespace, npy: Path, batch: int, row: tuple[str, str, bool]
            ) -> dict[str, Any]:
    side, precision, compiled = row
    cmd = [sys.executable, __file__, "--child", side, "--npy", str(npy), "--batch", str(batch),
           "--precision", precision, "--repeats", str(args.repeats), "--steps", str(args.steps or 0),
           "--max-wait", str(args.max_wait), "--softhebb", args.softhebb or ""]
    if compiled:
        cmd.append("--compiled")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tools")])}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{side} child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(args: argparse.Namespace, npy: Path) -> list[dict[str, Any]]:
    """Every row at every batch size, rounds alternating the rows; the best round of each."""
    rows = [r for r in ROWS if (args.softhebb or r[0] == "hebbret") and r[1] in args.precisions]
    if args.no_compile:
        rows = [r for r in rows if not r[2]]
    out = []
    for batch in args.batches:
        gflop = essential_gflop(batch)
        rounds: dict[tuple, list[dict[str, Any]]] = {r: [] for r in rows}
        for k in range(args.rounds):
            for r in rows:
                res = run_row(args, npy, batch, r)
                log.info("batch %d, %s round %d: %.1f ms a step (load %s)", batch, r, k + 1,
                         res["step_s"] * 1e3, load_average())
                rounds[r].append(res)
        for (side, precision, compiled), results in rounds.items():
            best = min(results, key=lambda res: res["step_s"])
            out.append({"batch": batch, "side": side, "precision": precision,
                        "compiled": compiled, "step_s": best["step_s"], "steps": best["steps"],
                        "rounds_s": [res["step_s"] for res in results],
                        "gemm_gflops": best["gemm_gflops"], "essential_gflop": gflop,
                        "gemm_fraction": gflop / best["step_s"] / best["gemm_gflops"],
                        "compile": best["compile"], "first_call_s": best["first_call_s"]})
    reference = {r["batch"]: r["step_s"] for r in out if r["side"] == "softhebb"}
    for r in out:
        r["speedup_vs_softhebb"] = (reference[r["batch"]] / r["step_s"]
                                    if r["batch"] in reference else None)
    return out


def render(doc: dict[str, Any]) -> str:
    rows = [[r["batch"], r["side"], r["precision"], "compiled" if r["compiled"] else "eager",
             r["step_s"] * 1e3, r["speedup_vs_softhebb"], r["gemm_gflops"], r["gemm_fraction"],
             (r["compile"] or {}).get("compile_seconds")] for r in doc["rows"]]
    table = markdown_table(["batch", "side", "precision", "step", "step (ms, best round)",
                            "SoftHebb / it", "fp32 GEMM GF/s (same process)", "of GEMM rate",
                            "compile (s)"], rows, align="rlllrrrrr")
    t = doc["targets"]
    return (f"`{doc['command']}` — {doc['machine']['cpu']}, {doc['machine']['torch_threads']} "
            f"threads, torch {doc['machine']['torch']}; best of {doc['rounds']} rounds, load "
            f"average {doc['machine']['loadavg_start']} → {doc['loadavg_end']}\n\n{table}\n"
            f"Targets: batch 10 ≥ {TARGETS['batch10_ratio_min']}× SoftHebb's demo step "
            f"(best hebbret fp32 row): {t['batch10']}; batch 256 step ≥ "
            f"{TARGETS['batch256_gemm_fraction_min']:.0%} of the fp32 GEMM rate: "
            f"{t['batch256']}.\n")


def targets(rows: list[dict[str, Any]]) -> dict[str, str]:
    def best(batch: int, key: str) -> float | None:
        vals = [r[key] for r in rows if r["batch"] == batch and r["side"] == "hebbret"
                and r["precision"] == "fp32" and r[key] is not None]
        return max(vals) if vals else None

    b10, b256 = best(10, "speedup_vs_softhebb"), best(256, "gemm_fraction")
    return {"batch10": "not measured" if b10 is None else
            f"{b10:.2f}× — {'met' if b10 >= TARGETS['batch10_ratio_min'] else 'not met'}",
            "batch256": "not measured" if b256 is None else
            f"{b256:.0%} — {'met' if b256 >= TARGETS['batch256_gemm_fraction_min'] else 'not met'}"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--softhebb", help="SoftHebb's demo.py (without: hebbret's side only)")
    p.add_argument("--data", type=Path, default=Path("/work/data/cifar10/train"),
                   help="CIFAR-10 training folder of JPEGs")
    p.add_argument("--batches", type=int, nargs="+", default=[10, 256])
    p.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"],
                   help="hebbret's rows (SoftHebb's demo runs fp32)")
    p.add_argument("--steps", type=int, help="steps a timed pass (default 30 at batch 10, 4 at 256)")
    p.add_argument("--images", type=int, default=None,
                   help="real images to read (default: enough for 30 batches of 10, 4 of 256)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3, help="timed passes over the batches a round")
    p.add_argument("--max-wait", type=float, default=60.0,
                   help="seconds a process may wait for other jobs to leave the CPUs")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS of every process")
    p.add_argument("--no-compile", action="store_true", help="eager rows only")
    p.add_argument("--out", type=Path, default=REPO / "tools/results/softhebb.json")
    p.add_argument("--readme", type=Path, help="fill its softhebb section (docs/results.md)")
    for name in ("--child", "--npy", "--precision"):
        p.add_argument(name, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.child:
        return child(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if args.softhebb and not Path(args.softhebb).is_file():
        raise SystemExit(f"--softhebb {args.softhebb}: no such file")
    command = shlex.join(["python", "tools/bench_softhebb.py",
                          *(sys.argv[1:] if argv is None else argv)])
    machine = machine_info()
    images = args.images or max((args.steps or max(4, 300 // b)) * b for b in args.batches)
    with tempfile.TemporaryDirectory(prefix="bench_softhebb-") as tmp:
        npy = real_batches(args.data, images, Path(tmp) / "batches.npy")
        rows = measure(args, npy)
    doc = {"command": command, "machine": machine, "loadavg_end": load_average(),
           "rounds": args.rounds, "images": images, "rows": rows, "targets": targets(rows),
           "target_values": TARGETS}
    write_json(args.out, doc)
    if args.readme:
        fill_section(args.readme, "softhebb", render(doc))
    print(render(doc))
    return doc


if __name__ == "__main__":
    main()
