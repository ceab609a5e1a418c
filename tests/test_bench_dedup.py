"""The near-duplicate benchmark on a tiny real image folder."""

import json

import pytest

from hebbret.pretraining import pretrain

from .conftest import TINY_C3, load_tool, write_image_folder

pytestmark = pytest.mark.slow  # a tool smoke run: CI's second step


def test_dedup_bench_plants_copies_and_scores_each_kind(tmp_path):
    tool = load_tool("bench_dedup")
    folder = write_image_folder(tmp_path / "imgs", classes=3, per_class=8, size=16)
    run = pretrain(str(folder), out=str(tmp_path / "run"), model_kwargs=TINY_C3, img_size=16,
                   batch_size=4, epochs=1, quiet=True)
    results, doc = tmp_path / "dedup.json", tmp_path / "results.md"
    doc.write_text("x\n<!-- dedup:begin -->\n<!-- dedup:end -->\ny\n")
    tool.main([str(run), str(folder), "--per-kind", "2", "--results", str(results),
               "--readme", str(doc)])
    row = json.loads(results.read_text())["stages"]["dedup"]["imgs"]
    assert (row["images"], row["planted"]) == (24, 10)
    for t, s in row["sweep"].items():
        assert 0.8 <= float(t) < 1 and 0 <= s["precision"] <= 1 and 0 <= s["recall"] <= 1
        assert s["hflip"]["recall"] == 1.0  # the nets' descriptor sums the image and its mirror
    assert row["best_f1_threshold"] in [float(t) for t in row["sweep"]]
    assert "| imgs | 24 | 10 |" in doc.read_text()
