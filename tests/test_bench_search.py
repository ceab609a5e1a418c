"""The filtered / batch search benchmark on a tiny real collection."""

import json

import pytest

from hebbret.embed import extract_embeddings
from hebbret.index import build_index
from hebbret.pretraining import pretrain

from .conftest import TINY_C3, load_tool, write_image_folder

pytestmark = pytest.mark.slow  # subprocesses: CI's second step


def test_search_bench_times_filtered_and_batch_search(tmp_path):
    tool = load_tool("bench_search")
    folder = write_image_folder(tmp_path / "imgs", classes=3, per_class=8, size=16)
    run = pretrain(str(folder), out=str(tmp_path / "run"), model_kwargs=TINY_C3, img_size=16,
                   batch_size=4, epochs=1, quiet=True)
    index = build_index(extract_embeddings(run, folder, tmp_path / "emb", quiet=True),
                        tmp_path / "idx")
    results = tmp_path / "search.json"
    tool.main([str(index), str(folder / "class_1"), "--filter-queries", "20", "--per-process",
               "2", "--results", str(results)])
    stages = json.loads(results.read_text())["stages"]
    f, b = stages["filtered"]["idx"], stages["batch"]["idx"]
    assert f["filter_rows"] == 8 and f["same_hits_as_exact"] == 1.0 and f["ratio"] > 0
    assert b["images"] == 8 and b["per_process_images"] == 2 and b["speedup"] > 0
