"""Smoke test of tools/bench_scale.py: both parts at toy sizes write a complete report."""


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
