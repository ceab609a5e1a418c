"""Smoke test of tools/bench_hebb.py: a --quick run writes a complete, finite JSON report."""

import math

import pytest

from hebbret._io import read_json

from .conftest import load_tool

pytestmark = pytest.mark.slow  # subprocesses / tool smoke runs: CI's second step


def positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def test_quick_benchmark_writes_finite_positive_ratios(tmp_path, capsys):
    out = tmp_path / "b.json"
    load_tool("bench_hebb").main(["--quick", "--out", str(out)])
    res = read_json(out)

    assert {"command", "config", "machine", "gemm_gflops", "layers", "steps", "ratios",
            "targets", "total_runtime_s"} <= set(res)
    assert res["config"]["batch_size"] == 4 and "--quick" in res["command"]
    assert res["machine"]["torch_threads"] >= 1 and res["machine"]["cpu"]
    assert all(positive(v) for v in res["gemm_gflops"].values())
    assert set(res["gemm_onednn_gflops"]) == set(res["gemm_gflops"])
    assert all(positive(v) for v in res["gemm_onednn_gflops"].values())

    # every Hebbian layer of both backbones: c3 has 3 convs, 6l has 4 convs and 1 fc
    layers = res["layers"]
    assert [r["model"] for r in layers].count("hebb_softhebb_c3") == 3
    assert [r["type"] for r in layers if r["model"] == "hebb_fasthebb_6l"] == (
        ["HebbConv2d"] * 4 + ["HebbLinear"])
    for r in layers:
        grams = {"conv", "unfold"} if r["type"] == "HebbConv2d" else {"matmul"}
        assert set(r["fused_s"]) == grams and r["best_gram"] in grams
        assert all(positive(t) for t in r["fused_s"].values())
        for key in ("fused_best_s", "fused_gflops", "mat_measured_s", "mat_extrapolated_s",
                    "speedup", "gflop"):
            assert positive(r[key]), (r["layer"], key, r[key])
        assert r["verify"]["ok"], r["verify"]  # materialised ΔW equals the fused one

    steps = res["steps"]
    for key in ("hebbian_s", "backprop_s", "hebbian_gflops", "hebbian_gemm_fraction",
                "hebb_over_backprop", "essential_gflop"):
        assert positive(steps[key]), (key, steps[key])
    assert steps["breakdown"] and all(positive(b["s"]) for b in steps["breakdown"])
    assert all(positive(v) for v in res["ratios"].values())
    assert set(res["targets"]) == {"conv_speedup_ge_50x", "hebbian_step_ge_50pct_gemm",
                                   "hebbian_step_ge_50pct_onednn_gemm",
                                   "hebb_over_backprop_le_0_7", "materialised_matches_fused"}
    assert all(isinstance(v, bool) for v in res["targets"].values())
    assert res["targets"]["materialised_matches_fused"]

    table = capsys.readouterr().out
    assert "speed-up" in table and "python tools/bench_hebb.py --quick" in table
