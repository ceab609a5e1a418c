"""Smoke test of tools/bench_scale.py: both parts at toy sizes write a complete report."""


import json

import pytest

from .conftest import load_tool, write_image_folder

pytestmark = pytest.mark.slow  # subprocesses / tool smoke runs: CI's second step


def test_toy_scale_benchmark_reports_rates_memory_and_recall(tmp_path):
    data = write_image_folder(tmp_path / "images", classes=2, per_class=8, size=32)
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- scale-results:begin -->\nold\n<!-- scale-results:end -->\ny\n")
    doc = load_tool("bench_scale").main([
        "--pretrain-data", str(data), "--steps", "2", "--batch", "4", "--widths", "4", "8", "8",
        "--n", "4000", "--dim", "16", "--factory", "IVF16,SQ8", "--nprobe", "2", "16",
        "--queries", "40", "--query-batch", "20", "--work", str(tmp_path / "work"),
        "--results", str(tmp_path / "scale.json"), "--readme", str(readme)])
    st = doc["stages"]["scale"]
    rows = st["pretrain"]["rows"]
    assert rows["2p1t"]["world_size"] == 2 and rows["1p1t"]["world_size"] == 1
    assert all(r["steps"] == 2 and r["steps_per_s"] > 0 for r in rows.values())
    assert st["pretrain"]["parallel_efficiency"] > 0
    ix = st["index"]
    assert ix["n"] == 4000 and ix["build"]["memory_mib"]["VmHWM"] > 0
    by = ix["search"]["by_nprobe"]
    assert set(by) == {"2", "16"} and all(r["qps"] > 0 for r in by.values())
    assert by["16"]["recall_at_10"] >= by["2"]["recall_at_10"] and by["16"]["recall_at_10"] > 0.8
    text = readme.read_text()
    assert "old" not in text and "queries/s" in text and "Parallel efficiency" in text


def test_budget_benchmark_builds_through_the_cli_and_checks_the_choice(tmp_path):
    readme = tmp_path / "results.md"
    readme.write_text("<!-- budget-results:begin -->\nold\n<!-- budget-results:end -->\n")
    results = tmp_path / "budget.json"
    load_tool("bench_budget").main([
        "--n", "6000", "--dim", "16", "--queries", "50", "--budget", "10M:0.9", "20K:0.99",
        "--work", str(tmp_path / "work"), "--results", str(results), "--readme", str(readme)])
    rows = json.loads(results.read_text())["stages"]["budget"]
    roomy, tight = rows["10M:0.9"], rows["20K:0.99"]
    # 6,000 × 16 float32 is 375 KiB: a roomy budget gets an index that keeps it and the recall
    # on the whole collection; 20 KiB cannot hold 6,000 vectors at recall 0.99: refused
    assert roomy["recall_at_10"] >= 0.9 and roomy["meets_budget"] and roomy["build"]["wall_s"] > 0
    assert roomy["predicted_recall_at_10"] <= roomy["sample_recall_at_10"]
    assert tight["refused"]
    text = readme.read_text()
    assert "20K, recall 0.99 | none fits" in text and "old" not in text
