"""The compute-matched benchmark (issue 23) end to end on a tiny real image folder: Hebbian and
SimCLR children for two budgets, scored, tabled, plotted, and resumed."""

import json

import pytest
from PIL import Image

from .conftest import load_tool, write_image_folder


@pytest.mark.slow  # child processes training for wall-clock budgets
def test_bench_ssl_trains_scores_and_skips_finished_rows(tmp_path, caplog):
    pytest.importorskip("lightly")
    tool = load_tool("bench_ssl")
    folder = write_image_folder(tmp_path / "imgs", classes=3, per_class=10, size=16)
    results, readme, png = tmp_path / "ssl.json", tmp_path / "results.md", tmp_path / "ssl.png"
    readme.write_text("# r\n<!-- ssl-results:begin -->\nold\n<!-- ssl-results:end -->\ntail\n")
    argv = [str(folder), "--budgets", "2", "--rows", "hebbian", "simclr", "--work",
            str(tmp_path / "work"), "--results", str(results), "--readme", str(readme),
            "--plot", str(png)]
    tool.main(argv)
    rows = json.loads(results.read_text())["stages"]["imgs"]
    assert set(rows) == {f"2 s | {m} | hebb_softhebb_c3" for m in ("hebbian", "simclr")}
    for r in rows.values():
        assert r["steps"] > 0 and r["images_seen"] > 0 and r["cpu_s"] > 0
        assert r["peak_rss_gib"] > 0 and 0 <= r["knn_top1"] <= 100 and 0 <= r["mAP"] <= 100
        assert 0 <= r["linear_top1"] <= 100 and r["fewshot_best"] in r["fewshot"]
        assert r["fewshot"][r["fewshot_best"]]["n"] == 3  # three labeled subsets
    simclr = rows["2 s | simclr | hebb_softhebb_c3"]
    assert simclr["clock_s"] >= 2 and "hebbret ssl" in simclr["train_command"]
    assert "--budget-s 2" in simclr["train_command"] and "init_radius" not in \
        simclr["train_command"]  # the same net from its default start, not the Hebbian one
    hebb = rows["2 s | hebbian | hebb_softhebb_c3"]
    assert "hebbret pretrain" in hebb["train_command"] and "--steps 500" in hebb["train_command"]
    assert "--model-kwargs '{\"init_radius\": 5.0}'" in hebb["train_command"]  # `run`'s recipe
    text = readme.read_text()
    assert "old" not in text and text.endswith("<!-- ssl-results:end -->\ntail\n")
    assert "| 2 | simclr | hebb_softhebb_c3 |" in text and "**Crossover**" in text
    with Image.open(png) as img:
        assert img.width > 100
    before = results.read_text()
    caplog.clear()
    with caplog.at_level("INFO"):
        tool.main(argv)  # every row is there: nothing trains, nothing changes
    assert results.read_text() == before and "already in" in caplog.text
    assert "running" not in caplog.text


def test_crossover_is_the_first_budget_an_ssl_row_beats_hebbian():
    tool = load_tool("bench_ssl")

    def row(budget, method, knn, m_ap):
        return {"budget_s": budget, "method": method, "model": "net", "knn_top1": knn, "mAP": m_ap}

    rows = [row(60, "hebbian", 50, 20), row(60, "byol", 40, 21), row(600, "hebbian", 52, 20),
            row(600, "byol", 55, 25), row(600, "simclr", 53, 19)]
    assert tool.crossover(rows, "knn_top1") == {"budget_s": 600, "row": "byol, net",
                                                "value": 55, "hebbian": 52}
    assert tool.crossover(rows, "mAP")["budget_s"] == 60
    assert tool.crossover(rows[:1], "mAP") is None
    assert "kNN top-1 (k=20): no SSL row beats Hebbian at any budget measured (60 s)" in \
        tool.crossover_line(rows[:2])


def test_a_hebbian_run_that_finished_inside_a_smaller_budget_is_reused(tmp_path):
    tool = load_tool("bench_ssl")
    from _common.results import ResultsFile

    res = ResultsFile(tmp_path / "r.json", ["test"], tmp_path)
    base = {"method": "hebbian", "model": "net", "knn_top1": 50.0}
    res.put("c", "60 s | hebbian | net", {**base, "budget_s": 60, "clock_s": 59.9})  # cut short
    assert tool.finished_before(res, "c", "net", 600) is None
    res.put("c", "180 s | hebbian | net", {**base, "budget_s": 180, "clock_s": 120.0})  # finished
    assert tool.finished_before(res, "c", "net", 600) == "180 s | hebbian | net"
    assert tool.finished_before(res, "c", "net", 180) is None  # only smaller budgets
    assert tool.finished_before(res, "c", "other", 600) is None
    res = ResultsFile(tmp_path / "r.json", ["test"], tmp_path)
    res.force("c")  # --force: the file's rows are to be redone, so none is reused
    assert tool.finished_before(res, "c", "net", 600) is None
