"""Smoke test of tools/reproduce_cifar10.py: every stage on a tiny synthetic CIFAR-like folder."""

import json
from pathlib import Path

import pytest

from .conftest import TINY_C3, load_tool, write_image_folder

pytestmark = pytest.mark.slow  # subprocesses / tool smoke runs: CI's second step


SCRIPT = Path(__file__).resolve().parent.parent / "tools" / "reproduce_cifar10.py"


def load_script(script=SCRIPT):
    return load_tool(script.stem)


def test_every_stage_runs_merges_its_results_and_fills_the_readme(tmp_path):
    repro = load_script()
    data = tmp_path / "data" / "cifar10"
    write_image_folder(data / "train", classes=3, per_class=12, size=32, seed=0)
    write_image_folder(data / "test", classes=3, per_class=4, size=32, seed=1)
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- cifar10-results:begin -->\nold\n<!-- cifar10-results:end -->\ntail\n")
    settings = repro.Settings(c3_kwargs=TINY_C3, sixl_kwargs={"widths": [8, 8, 8, 8, 16]},
                              readout_epochs=2, readout_seeds=(0, 1), budgets=(0.5,), seeds=(0,),
                              finetune_epochs=1,
                              linear_max_iter=20, pca_dim=4, whiten_dim=3, skip=("c3-scratch/0.5",),
                              speed_steps=3)
    results = tmp_path / "cifar10.json"
    argv = [str(tmp_path / "data"), "--work", str(tmp_path / "work"), "--results", str(results),
            "--readme", str(readme)]
    for stage in repro.STAGES:  # one stage per call: each merges into the same JSON
        repro.main([*argv, "--stage", stage], settings)
    doc = json.loads(results.read_text())
    st = doc["stages"]
    assert set(st) == set(repro.STAGES)
    for variant in ("hebbian", "random"):
        row = st["softhebb"][variant]
        assert 0 <= row["readout_top1"] <= 100 and row["dim"] == 32 * 4 * 4
        assert set(row["readout_seeds"]) == {"0", "1"} and row["readout_top1_std"] >= 0
        prot = st["protocols"][f"{variant}/0.5"]
        assert prot["graph_index"] == "PCA4,Flat"
        assert {p: prot[p]["top1"]["n"] for p in ("knn", "linear", "propagate")} == \
            {"knn": 1, "linear": 1, "propagate": 1}
        assert row["git_commit"] and row["machine"] and "--stage softhebb" in row["command"]
        assert st["retrieval"][f"{variant}-pca4"]["dim"] == 4
        assert st["retrieval"][f"{variant}-pca4"]["index_vs_metric_top10_agreement"] == 1.0
        assert st["retrieval"][f"{variant}-pcaw3"]["factory"] == "PCAW3,L2norm,Flat"
        assert st["retrieval"][f"{variant}-pcaw3"]["index_vs_metric_top10_agreement"] == 1.0
    assert st["softhebb"]["hebbian"]["images"] == 36 and st["softhebb"]["hebbian"]["images_per_s"] > 0
    few = st["few-labels"]
    assert few["6l-hpca/0.5/seed0"]["labeled_items"] == 18
    assert few["c3-scratch/0.5/seed0"]["skipped"].startswith("too slow")
    assert len([k for k in st["layers"] if k.startswith("6l-swta/")]) == 5
    assert not list((tmp_path / "work").glob("6l-*/emb_block*"))  # per-layer features freed
    assert {"hebbian_fp32", "hebbian_bf16", "backprop_fp32"} <= set(st["speed"]["step_rates"])
    assert st["speed"]["bf16_epoch"]["readout_top1"] >= 0
    text = readme.read_text()
    assert "\nold\n" not in text and text.endswith("tail\n")
    assert f"| Hebbian (softhebb) | {st['softhebb']['hebbian']['readout_top1']:.2f} ± " in text
    assert "| Hebbian | propagate | not run yet | not run yet | not run yet |" in text  # no 0.5 column
    assert st["softhebb"]["hebbian"]["convergence"]["layers"][0]["layer"] == 0
    assert "Convergence after the epoch" in text
    assert "| Hebbian + PCA-whitening | 3 |" in text and "Target kNN top-1 ≥ 70.0: " in text
    variant = st["variants"]["init-radius-5"]
    assert variant["model_kwargs"] == {"init_radius": 5.0} and 0 <= variant["knn_top1"] <= 100
    assert "| init-radius-5 |" in text
    assert not (tmp_path / "work" / "c3-init-radius-5" / "emb_train").exists()
    assert "too slow for this CPU, not run" in text and "| swta | block4 | 16 |" in text
    # finished results are kept: a rerun redoes nothing
    before = results.read_text()
    repro.main([*argv, "--stage", "softhebb", "few-labels"], settings)
    assert results.read_text() == before
    # --protocols redoes some 3b cells and keeps the others, marked with their commit
    old = st["protocols"]["hebbian/0.5"]
    repro.main([*argv, "--stage", "protocols", "--force", "--protocols", "propagate"], settings)
    redone = json.loads(results.read_text())["stages"]["protocols"]["hebbian/0.5"]
    for protocol in ("knn", "linear"):
        assert redone[protocol] == {**old[protocol], "git_commit": old["git_commit"]}
    assert set(redone["propagate"]["prior_weight"]) == {"0"} and redone["finished"] >= old["finished"]
    # --archs and --budgets narrow a session's few-label work to some cells
    repro.main([*argv, "--stage", "few-labels", "--archs", "6l-scratch", "--budgets", "0.25"],
               settings)
    added = set(json.loads(results.read_text())["stages"]["few-labels"]) - set(few)
    assert added == {"6l-scratch/0.25/seed0"}
    with pytest.raises(FileNotFoundError, match="train/ and test/"):
        repro.main([str(tmp_path / "nowhere"), "--results", str(results), "--readme", ""], settings)


def test_a_cell_with_some_seeds_run_and_the_rest_skipped_says_both():
    from _common import cifar10_tables as tables
    rows = {"c3-scratch/0.1/seed0": {"arch": "c3-scratch", "budget": 0.1, "seed": 0, "top1": 60.0},
            "c3-scratch/0.1/seed1": {"arch": "c3-scratch", "budget": 0.1, "seed": 1,
                                     "skipped": "too slow for this CPU (--skip)"}}
    text = tables.render({"stages": {"few-labels": rows}})
    assert ("| c3-scratch | not run yet | not run yet | 60.00 (1 seed; the other seeds too slow "
            "for this CPU, not run) |") in text


def test_force_keeps_each_old_result_until_its_replacement_is_written(tmp_path):
    from _common.results import ResultsFile

    path = tmp_path / "r.json"
    res = ResultsFile(path, [], tmp_path)
    res.put("retrieval", "hebbian", {"knn_top1": 1.0})
    res.put("retrieval", "random", {"knn_top1": 2.0})
    again = ResultsFile(path, ["--force"], tmp_path)
    again.force("retrieval")
    assert again.get("retrieval", "hebbian") is None  # to be redone ...
    assert json.loads(path.read_text())["stages"]["retrieval"]["hebbian"]["knn_top1"] == 1.0
    again.put("retrieval", "hebbian", {"knn_top1": 3.0})  # ... replaced when done
    assert again.get("retrieval", "hebbian")["knn_top1"] == 3.0
    kept = json.loads(path.read_text())["stages"]["retrieval"]
    assert kept["hebbian"]["knn_top1"] == 3.0 and kept["random"]["knn_top1"] == 2.0
