"""The resolution and convergence benchmarks, on tiny real image folders."""

import json

import numpy as np
import pytest
from PIL import Image

from hebbret.data import held_out

from .conftest import load_tool, write_image_folder

pytestmark = pytest.mark.slow  # subprocesses / tool smoke runs: CI's second step


def test_convergence_bench_scores_held_out_training_rows_and_the_signal(tmp_path):
    tool = load_tool("bench_convergence")
    folder = write_image_folder(tmp_path / "imgs", classes=3, per_class=10, size=16)
    held = held_out(np.repeat([0, 1, 2], 10))
    assert held.sum() == 6 and all(held[c * 10:(c + 1) * 10].sum() == 2 for c in range(3))
    results = tmp_path / "conv.json"
    tool.main([str(folder), "--steps", "50", "--milestones", "20", "50", "--model-kwargs",
               '{"widths": [8, 16, 32]}', "--results", str(results), "--table",
               str(tmp_path / "conv.md")])
    row = json.loads(results.read_text())["stages"]["convergence"]["imgs, radius 5"]
    assert [m["step"] for m in row["milestones"]] == [20, 50]
    for m in row["milestones"]:
        assert (m["knn"] * 6 / 100) == pytest.approx(round(m["knn"] * 6 / 100))  # 6 rows held out
        assert len(m["convergence"]["layers"]) == 3
    first = row["milestones"][0]["convergence"]["layers"][0]
    assert first["speed_ratio"] == 1.0 and not first["converged"]  # one measurement: its peak
    table = (tmp_path / "conv.md").read_text()
    assert "| imgs, radius 5 | 20 |" in table and "| imgs, radius 5 | 50 |" in table


def test_the_threshold_sweep_never_calls_a_still_improving_run_converged():
    tool = load_tool("bench_convergence")

    def run(*points):  # (kNN, slowest layer's speed ratio) per milestone
        return {"milestones": [{"step": 100 * (i + 1), "knn": knn, "convergence": {"layers": [
            {"speed_ratio": 0.1}, {"speed_ratio": ratio}]}} for i, (knn, ratio) in enumerate(points)]}

    # a: still gains 2 points after its 0.7 milestone; b: plateaus from its 0.9 milestone on
    doc = {"stages": {"convergence": {"a": run((50, 1.0), (51, 0.7), (53, 0.3)),
                                      "b": run((60, 1.0), (70, 0.9), (70.5, 0.4), (70, 0.2))}}}
    # a's 0.7 must stay "no" (≤ 0.65); b's 0.9 and 0.4 plateaus: 0.4 caught from 0.4 up, 0.9 never
    table, choice = tool.threshold_sweep(doc)
    assert choice == pytest.approx((0.40 + 0.65) / 2)
    assert "| 0.70 | 1 | 1 | 3 |" in table and "| 0.35 | 0 | 2 | 3 |" in table


def test_resolution_bench_upscales_a_folder_and_renders_its_rows(tmp_path):
    tool = load_tool("bench_resolution")
    src = tmp_path / "small"
    for split in ("train", "test"):
        write_image_folder(src / split, classes=2, per_class=2, size=16)
    big = tool.upscale_folder(src, tmp_path / "big", 64)
    with Image.open(big / "train" / "class_1" / "img_0.png") as img:
        assert img.size == (64, 64)
    assert tool.upscale_folder(src, tmp_path / "big", 64) == big  # complete: reused
    side = {"knn_top1": 50.0, "mAP": 30.0, "fewshot_mean": 40.0, "fewshot_best": "knn",
            "dim": 6144, "pretrain_s": 10.0, "embed_s": 2.0}
    doc = {"stages": {"solar": {"auto": {
        "hebbian": side, "random": {**side, "knn_top1": 45.0}, "peak_rss_gib": 1.5,
        "wall_s": 100.0, "run_dir": str(tmp_path / "gone"), "run_command": "hebbret run X",
        "machine": "test", "converged": {"converged": True, "speed_ratio": [0.05, 0.08]},
        "inputs": {"img_size": 96, "model": "hebb_softhebb_c4"}}}}}
    text = tool.table(doc)
    assert "| auto | 96 px, softhebb_c4 | 6144 | 50.00 | 45.00 |" in text
    assert "yes (0.05 / 0.08)" in text and "`auto`: `hebbret run X` (commit ?)" in text


def test_descriptor_bench_scores_each_descriptor_on_held_out_training_rows(tmp_path):
    from hebbret.pretraining import pretrain

    from .conftest import TINY_C3

    tool = load_tool("bench_descriptors")
    folder = write_image_folder(tmp_path / "imgs", classes=3, per_class=10, size=16)
    run = pretrain(str(folder), out=str(tmp_path / "run"), model_kwargs=TINY_C3, img_size=16,
                   batch_size=4, steps=4, quiet=True)
    results = tmp_path / "d.json"
    tool.main([str(run), str(folder), "--name", "tiny", "--results", str(results),
               "--descriptors", "features:flatten", "features:avg:2", "block1+features:gem:1:3",
               "features:flatten@pca8", "features:flatten@pca64w1", "features:avg:2^0.5@pca8"])
    scores = json.loads(results.read_text())["stages"]["descriptors"]["tiny"]["scores"]
    assert {k: v["dim"] for k, v in scores.items()} == {
        "features:flatten": 32 * 2 * 2, "features:avg:2": 32 * 4, "block1+features:gem:1:3": 48,
        "features:flatten@pca8": 8, "features:flatten@pca64w1": 23,  # 24 rows fit the PCA
        "features:avg:2^0.5@pca8": 8}
    assert tool.parse("features:avg:2!h^0.5@pca256")[1:] == (256, 0.0, 0.5)
    for v in scores.values():  # 6 held-out rows: top-1 counts whole rows
        assert v["knn_top1"] * 6 / 100 == pytest.approx(round(v["knn_top1"] * 6 / 100))
    # whitening every direction the rows span: unit variance along each of them
    x = np.random.default_rng(0).normal(size=(30, 128)).astype(np.float32)
    fit = np.arange(30) < 24
    white = tool.project(x, fit, 64, 1.0)
    np.testing.assert_allclose(white[fit].var(0), np.ones(23), rtol=1e-3)
