"""Data-parallel Hebbian pretraining and sharded embedding under a real ``torchrun`` (gloo, CPU).

A 2-process job must give weights bit-identical to one process that splits every global batch
into the same two shards and sums their statistics in the same order, and equal within 1e-5 to
a plain one-process run with the same global batch.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hebbret.config import PretrainConfig
from hebbret.data import make_loader, shard_bounds
from hebbret.distributed import ShardSum
from hebbret.models import create_model
from hebbret.pretraining import _resolve, hebbian_step, pretrain
from hebbret.runtime import memory_format

from .conftest import TINY_C3, write_image_folder

pytestmark = pytest.mark.slow  # subprocesses / tool smoke runs: CI's second step


WORKER = Path(__file__).parent / "dist_worker.py"
TINY_6L = {"widths": [4, 4, 4, 4, 8]}
COMMON = dict(batch_size=7, steps=3, seed=5, img_size=24)  # 7 = shards of 4 and 3
COMBOS = [(model, rule, mode) for model in ("hebb_softhebb_c3", "hebb_fasthebb_6l")
          for rule in ("hpca", "swta", "softhebb") for mode in ("consecutive", "greedy")]
COMBOS.append(("hebb_softhebb_c3", "none", "consecutive"))  # BatchNorm calibration only


def kwargs_of(model: str, rule: str, mode: str) -> dict:
    return dict(model=model, rule=rule, mode=mode,
                model_kwargs=TINY_C3 if model == "hebb_softhebb_c3" else TINY_6L, **COMMON)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(spec: dict, tmp: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    path = tmp / f"spec-{free_port()}.json"
    path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HEBBRET_DIST_TIMEOUT": "60"}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
         "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(WORKER), str(path)],
        capture_output=True, text=True, env=env, timeout=600)


def assert_close_weights(got: dict, want: dict, rtol: float = 1e-5) -> None:
    """Every float tensor within ``rtol`` of ``want``'s largest entry; the others equal."""
    for k in got:
        if got[k].is_floating_point():
            scale = want[k].abs().max().clamp_min(1e-12)
            assert float((got[k] - want[k]).abs().max() / scale) <= rtol, k
        else:
            assert torch.equal(got[k], want[k]), k


def sharded_reference(data: str, shards: int, **kwargs) -> dict[str, torch.Tensor]:
    """pretrain's loop in this process, every global batch split into ``shards`` pieces whose
    statistics are summed by ShardSum (steps ≤ one epoch)."""
    cfg = PretrainConfig(data=data, **kwargs)
    resolved, dataset = _resolve(cfg)
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, in_chans=resolved["in_chans"],
                         img_size=resolved["img_size"], rule=resolved["rule"], **cfg.model_kwargs)
    model.reset_classifier(len(dataset.classes))
    fmt = memory_format(cfg.channels_last)
    model.to(memory_format=fmt).train()
    if resolved["rule"] == "none":
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = None
    layers = model.hebb_layers()
    opt = torch.optim.SGD([{"params": [la.weight], "lr": lr}
                           for la, lr in zip(layers, resolved["lr"], strict=True)])
    phases = ([list(range(len(layers)))] if cfg.mode == "consecutive"
              else [[i] for i in range(len(layers))])
    for p, active in enumerate(phases):
        loader = make_loader(dataset, resolved["batch_size"], cfg.seed,
                             epoch=p * resolved["epochs"])
        for step, batch in enumerate(loader):
            if step == resolved["steps"]:
                break
            x = batch.images.contiguous(memory_format=fmt)
            pieces = [x[a:b] for a, b in (shard_bounds(len(x), r, shards)
                                          for r in range(shards))]
            hebbian_step(model, opt, pieces, active, reduce=ShardSum())
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("dist") / "images", classes=3,
                              per_class=10, size=24)


@pytest.fixture(scope="module")
def two_process_runs(folder, tmp_path_factory) -> Path:
    """Every combo trained by one 2-process torchrun job (one job keeps the suite fast)."""
    out = tmp_path_factory.mktemp("dist-runs")
    jobs = [{"data": str(folder), "out": str(out / "-".join(c)), "kwargs": kwargs_of(*c)}
            for c in COMBOS]
    done = torchrun({"jobs": jobs}, out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.parametrize("combo", COMBOS, ids=["-".join(c) for c in COMBOS])
def test_two_processes_equal_the_sharded_reference_bit_for_bit_and_one_process_closely(
        combo, folder, two_process_runs, tmp_path):
    run = two_process_runs / "-".join(combo)
    got = load_file(run / "model.safetensors")
    # rank 0 alone fits the descriptor PCA after training (tested in test_embed): the backbone
    # weights are what the processes share
    pca = {k: got.pop(k) for k in [k for k in got if k.startswith("descriptor_pca.")]}
    fitted = json.loads((run / "model.json").read_text())["training"]["descriptor_pca"]
    assert fitted["images"] == 30
    assert fitted["dims"] == (len(pca["descriptor_pca.components"]) if pca else 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process
    try:
        reference = sharded_reference(str(folder), 2, **kwargs_of(*combo))
    finally:
        torch.set_num_threads(threads)
    assert got.keys() == reference.keys()
    for k in got:
        assert torch.equal(got[k], reference[k]), k  # bit for bit
    plain = load_file(pretrain(str(folder), out=str(tmp_path / "plain"), quiet=True,
                               **kwargs_of(*combo)) / "model.safetensors")
    assert_close_weights(got, plain)
    card = json.loads((run / "model.json").read_text())["training"]
    assert card["world_size"] == 2 and json.loads((run / "config.json").read_text())[
        "world_size"] == 2
    assert card["images_seen"] == sum(min(7, 30 - 7 * s) for s in range(3)) * (
        1 if combo[2] == "consecutive" else len(create_model(
            combo[0], **kwargs_of(*combo)["model_kwargs"], img_size=24).hebb_layers()))


COMPILED = [("hebb_softhebb_c3", "softhebb", "consecutive"), ("hebb_fasthebb_6l", "hpca", "greedy")]


@pytest.mark.parametrize("combo", COMPILED, ids=["-".join(c) for c in COMPILED])
def test_a_compiled_torchrun_job_equals_the_eager_one(combo, folder, two_process_runs, tmp_path):
    """Under torchrun's reduction the compiled directions and statistics (inductor) give the
    eager job's weights within float32 rounding."""
    done = torchrun({"jobs": [{"data": str(folder), "out": str(tmp_path / "run"),
                               "kwargs": {**kwargs_of(*combo), "compile": "on"}}]}, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    card = json.loads((tmp_path / "run" / "model.json").read_text())["training"]
    assert card["compiled_step"]["compiled"], card["compiled_step"]  # not a silent fallback
    got = load_file(tmp_path / "run" / "model.safetensors")
    eager = load_file(two_process_runs / "-".join(combo) / "model.safetensors")
    assert got.keys() == eager.keys()
    assert_close_weights(got, eager)


def test_a_killed_torchrun_job_resumes_to_the_same_weights(folder, tmp_path):
    kw = dict(kwargs_of("hebb_softhebb_c3", "softhebb", "consecutive"), steps=4,
              checkpoint_every=2)
    whole = torchrun({"jobs": [{"data": str(folder), "out": str(tmp_path / "whole"),
                                "kwargs": kw}]}, tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = torchrun({"jobs": [{"data": str(folder), "out": str(tmp_path / "killed"),
                                 "kwargs": kw, "kill_at": 4}]}, tmp_path)
    assert killed.returncode != 0 and not (tmp_path / "killed" / "model.json").exists()
    resumed = torchrun({"jobs": [{"data": str(folder), "out": str(tmp_path / "killed"),
                                  "kwargs": {**kw, "resume": True}}]}, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(tmp_path / "whole" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_rank_that_dies_fails_the_job_instead_of_hanging(folder, tmp_path):
    kw = dict(kwargs_of("hebb_softhebb_c3", "softhebb", "consecutive"), steps=4)
    t0 = time.perf_counter()
    done = torchrun({"jobs": [{"data": str(folder), "out": str(tmp_path / "run"), "kwargs": kw,
                               "kill_at": 2, "kill_rank": 1}]}, tmp_path)
    assert done.returncode != 0 and time.perf_counter() - t0 < 55  # < the collective timeout
    assert not (tmp_path / "run" / "model.json").exists()


def test_ranks_that_see_different_data_stop_with_an_error_naming_it(folder, tmp_path):
    other = write_image_folder(tmp_path / "other", classes=3, per_class=9, size=24)
    done = torchrun({"jobs": [{"data_by_rank": [str(folder), str(other)],
                               "out": str(tmp_path / "run"),
                               "kwargs": kwargs_of("hebb_softhebb_c3", "softhebb",
                                                   "consecutive")}]}, tmp_path)
    assert done.returncode != 0
    assert "see different data" in done.stderr and "rank 1: 27 files" in done.stderr
    assert not (tmp_path / "run" / "model.json").exists()


def test_shard_bounds_cover_every_row_once():
    for n in range(0, 12):
        for size in (1, 2, 3, 5):
            parts = [shard_bounds(n, r, size) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
            sizes = [b - a for a, b in parts]
            assert max(sizes) - min(sizes) <= 1 and math.fsum(sizes) == n


def test_sharded_forward_of_one_shard_equals_the_plain_step():
    """One process, one shard: the data-parallel path computes what the plain step computes."""
    torch.manual_seed(0)
    x = torch.randn(6, 3, 16, 16)
    runs = []
    for reduce in (None, ShardSum()):
        torch.manual_seed(1)
        model = create_model("hebb_softhebb_c3", img_size=16, **TINY_C3).train()
        opt = torch.optim.SGD([{"params": [la.weight], "lr": 0.05} for la in model.hebb_layers()])
        hebbian_step(model, opt, x, [0, 1, 2], reduce=reduce)
        runs.append({k: v.clone() for k, v in model.state_dict().items()})
    for k in runs[0]:
        np.testing.assert_allclose(runs[0][k].float().numpy(), runs[1][k].float().numpy(),
                                   rtol=1e-5, atol=1e-6, err_msg=k)


def test_two_process_embedding_equals_one_process_row_for_row(folder, two_process_runs, tmp_path):
    from hebbret.embed import extract_embeddings, load_embeddings

    from .test_data import write_bad_files

    data = tmp_path / "images"
    write_image_folder(data, classes=3, per_class=9, size=24, seed=3)
    n_bad = write_bad_files(data / "class_1")
    run = two_process_runs / "hebb_softhebb_c3-softhebb-consecutive"
    done = torchrun({"jobs": [{"embed": {"run": str(run), "data": str(data),
                                         "out": str(tmp_path / "two"), "batch_size": 4}}]},
                    tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = extract_embeddings(run, data, tmp_path / "one", batch_size=4, quiet=True)
    finally:
        torch.set_num_threads(threads)
    (a, items_a, meta_a), (b, items_b, meta_b) = load_embeddings(one), load_embeddings(
        tmp_path / "two")
    assert items_a == items_b and len(items_a) == 27
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert meta_b["skipped_files"] == meta_a["skipped_files"] == n_bad
    assert meta_b["world_size"] == 2 and not (tmp_path / "two" / ".shards").exists()
