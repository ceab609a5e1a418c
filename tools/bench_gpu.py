"""GPU benchmark: CIFAR-10 Hebbian epochs, embedding and the main job on one CUDA device.

    python tools/bench_gpu.py DATA_ROOT            # DATA_ROOT: train/ and test/ (CIFAR-10 JPEGs)

Measures, with ``hebb_softhebb_c3`` on ``DATA_ROOT/train``: a Hebbian epoch at batch 10 with a
cold packed cache (the packing included) and warm (fp32, then bf16), at batch 256 (fp32, bf16);
embedding train + test; ``hebbret run`` on the embedded default (when FAISS is importable).
Writes ``tools/results/gpu.json`` (wall and in-step seconds, GPU name, torch version) and the
docs/results.md table between the gpu-results markers. Without a GPU it says so, runs the same
sequence as a smoke pass on a few hundred images on the CPU, writes nothing and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from _common.folders import link_subset
from _common.results import fill_section
from hebbret._io import read_json, write_json
from hebbret.embed import extract_embeddings
from hebbret.pretraining import pretrain

log = logging.getLogger("bench_gpu")
REPO = Path(__file__).resolve().parent.parent
# (name, batch size, precision, cache): one Hebbian epoch each, in this order
EPOCHS = (("batch 10, fp32, cold cache", 10, "fp32", "cold"),
          ("batch 10, fp32, warm cache", 10, "fp32", "warm"),
          ("batch 10, bf16, warm cache", 10, "bf16", "warm"),
          ("batch 256, fp32, warm cache", 256, "fp32", "warm"),
          ("batch 256, bf16, warm cache", 256, "bf16", "warm"))


def epoch_row(train: Path, work: Path, name: str, batch: int, precision: str, device: str,
              steps: int | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    run = pretrain(str(train), out=str(work / name.replace(", ", "-").replace(" ", "")),
                   model="hebb_softhebb_c3", img_size=32, batch_size=batch, precision=precision,
                   device=device, epochs=1 if steps is None else None, steps=steps, quiet=True)
    wall = time.perf_counter() - t0
    card = read_json(run / "model.json")["training"]
    return {"name": name, "batch_size": batch, "precision": precision, "wall_s": round(wall, 2),
            "in_steps_s": card["train_seconds"], "images": card["images_seen"],
            "images_per_s": round(card["images_seen"] / wall, 1)}


def bench(data: Path, work: Path, device: str, steps: int | None) -> dict[str, Any]:
    os.environ["HEBBRET_CACHE_DIR"] = str(work / "cache")  # cold: a fresh, empty cache root
    rows = [epoch_row(data / "train", work, name, batch, precision, device, steps)
            for name, batch, precision, _ in EPOCHS]
    run = work / rows[1]["name"].replace(", ", "-").replace(" ", "")
    t0 = time.perf_counter()
    n = 0
    for split in ("train", "test"):
        out = extract_embeddings(run, str(data / split), work / f"emb_{split}", device=device,
                                 quiet=True)
        n += read_json(out / "meta.json")["count"]
    embed = {"images": n, "wall_s": round(time.perf_counter() - t0, 2)}
    embed["images_per_s"] = round(n / embed["wall_s"], 1)
    try:
        import faiss  # noqa: F401 - the main job builds FAISS indexes
    except ImportError:
        main_job = {"skipped": "faiss is not installed on this machine"}
    else:
        main_job = {"skipped": "CPU smoke pass"}
        if steps is None:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "hebbret.cli", "run", "--out",
                            str(work / "main"), "--device", device, "--quiet"], check=True)
            main_job = {"wall_s": round(time.perf_counter() - t0, 2)}
    return {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "torch": torch.__version__, "epochs": rows, "embed": embed, "main_job": main_job,
            "command": "python tools/bench_gpu.py " + " ".join(sys.argv[1:])}


def small_copy(data: Path, work: Path, train: int = 30, test: int = 10) -> Path:
    """``work/small/{train,test}/<class>/``: symlinks to the first images of every class."""
    link_subset(data, work / "small", {"train": train, "test": test})
    return work / "small"


def render(doc: dict[str, Any]) -> str:
    lines = [f"On {doc['device']} (torch {doc['torch']}); `{doc['command']}`:", "",
             "| measurement | wall (s) | inside the steps (s) | images/s |",
             "|---|---:|---:|---:|"]
    for r in doc["epochs"]:
        lines.append(f"| Hebbian epoch, {r['name']} | {r['wall_s']:.1f} | {r['in_steps_s']:.1f} "
                     f"| {r['images_per_s']:.0f} |")
    e = doc["embed"]
    lines.append(f"| embed {e['images']} images | {e['wall_s']:.1f} | – | "
                 f"{e['images_per_s']:.0f} |")
    mj = doc["main_job"] or {}
    lines.append(f"| `hebbret run` (embedded default) | "
                 f"{mj['wall_s']:.1f} | – | – |" if "wall_s" in mj else
                 f"| `hebbret run` (embedded default) | not run: {mj.get('skipped', '–')} | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_root", type=Path, help="folder with train/ and test/")
    parser.add_argument("--results", type=Path, default=REPO / "tools/results/gpu.json")
    parser.add_argument("--readme", type=Path, default=REPO / "docs" / "results.md")
    parser.add_argument("--smoke-steps", type=int, default=20,
                        help="Hebbian steps per row of the CPU smoke pass")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    data = args.data_root / "cifar10" if (args.data_root / "cifar10").is_dir() else args.data_root
    if not (data / "train").is_dir() or not (data / "test").is_dir():
        log.error("no train/ and test/ folders under %s", args.data_root)
        return 2
    gpu = torch.cuda.is_available()
    with tempfile.TemporaryDirectory(prefix="bench_gpu-") as work:
        if not gpu:
            log.info("torch sees no GPU: CPU smoke pass (%d steps a row), nothing written",
                     args.smoke_steps)
            doc = bench(small_copy(data, Path(work)), Path(work), "cpu", args.smoke_steps)
            print(render(doc))
            return 0
        doc = bench(data, Path(work), "cuda", None)
    write_json(args.results, doc)
    if "<!-- gpu-results:begin -->" in args.readme.read_text():
        fill_section(args.readme, "gpu-results", render(doc))
    print(render(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
