"""Smoke test of tools/reproduce_cifar10.py: every stage on a tiny synthetic CIFAR-like folder."""

import json
import statistics

import pytest

from .conftest import TINY_C3, load_tool, write_image_folder

pytestmark = pytest.mark.slow  # subprocesses / tool smoke runs: CI's second step


@pytest.fixture(scope="module")
def repro_run(tmp_path_factory):
    """Every stage once on a tiny CIFAR-like folder, one stage per call (each merges into the
    same JSON, and rewrites the README section)."""
    tmp = tmp_path_factory.mktemp("repro")
    repro = load_tool("reproduce_cifar10")
    data = tmp / "data" / "cifar10"
    write_image_folder(data / "train", classes=3, per_class=12, size=32, seed=0)
    write_image_folder(data / "test", classes=3, per_class=4, size=32, seed=1)
    readme = tmp / "README.md"
    readme.write_text("# x\n\n<!-- cifar10-results:begin -->\nold\n<!-- cifar10-results:end -->\ntail\n")
    settings = repro.Settings(c3_kwargs=TINY_C3, sixl_kwargs={"widths": [8, 8, 8, 8, 16]},
                              readout_epochs=2, readout_seeds=(0, 1), budgets=(0.5,), seeds=(0,),
                              finetune_epochs=1, linear_max_iter=20, pca_dim=4, whiten_dim=3,
                              skip=("c3-scratch/0.5",), speed_steps=3)
    results = tmp / "cifar10.json"
    argv = [str(tmp / "data"), "--work", str(tmp / "work"), "--results", str(results),
            "--readme", str(readme)]
    with pytest.MonkeyPatch.context() as m:
        m.setenv("HEBBRET_CACHE_DIR", str(tmp / "cache"))
        for stage in repro.STAGES:
            repro.main([*argv, "--stage", stage], settings)
    return {"repro": repro, "settings": settings, "argv": argv, "results": results, "tmp": tmp,
            "st": json.loads(results.read_text())["stages"], "text": readme.read_text()}


def test_every_stage_lands_in_the_results_with_its_provenance(repro_run):
    st = repro_run["st"]
    assert set(st) == set(repro_run["repro"].STAGES)
    row = st["softhebb"]["hebbian"]
    assert row["git_commit"] and row["machine"] and "--stage softhebb" in row["command"]
    assert row["images"] == 36 and row["images_per_s"] == round(36 / row["wall_s"], 1)
    assert row["convergence"]["layers"][0]["layer"] == 0


@pytest.mark.parametrize("variant", ["hebbian", "random"])
def test_the_readout_row_is_the_mean_and_spread_of_its_seeds(repro_run, variant):
    row = repro_run["st"]["softhebb"][variant]
    tops = [row["readout_seeds"][s]["top1"] for s in ("0", "1")]
    assert row["dim"] == 32 * 4 * 4 and set(row["readout_seeds"]) == {"0", "1"}
    assert row["readout_top1"] == round(statistics.mean(tops), 2)
    assert row["readout_top1_std"] == round(statistics.stdev(tops), 2)


@pytest.mark.parametrize("variant", ["hebbian", "random"])
def test_the_pca_indexes_rank_exactly_as_the_metrics_on_their_output(repro_run, variant):
    ret = repro_run["st"]["retrieval"]
    assert ret[f"{variant}-pca4"]["dim"] == 4
    assert ret[f"{variant}-pcaw3"]["factory"] == "PCAW3,L2norm,Flat"
    assert ret[f"{variant}-pca4"]["index_vs_metric_top10_agreement"] == 1.0
    assert ret[f"{variant}-pcaw3"]["index_vs_metric_top10_agreement"] == 1.0
    prot = repro_run["st"]["protocols"][f"{variant}/0.5"]
    assert prot["graph_index"] == "PCA4,Flat"
    assert {p: prot[p]["top1"]["n"] for p in ("knn", "linear", "propagate")} == \
        {"knn": 1, "linear": 1, "propagate": 1}


def test_few_label_cells_layers_variants_and_speed(repro_run):
    st, work = repro_run["st"], repro_run["tmp"] / "work"
    assert st["few-labels"]["6l-hpca/0.5/seed0"]["labeled_items"] == 18  # half of 36
    assert st["few-labels"]["c3-scratch/0.5/seed0"]["skipped"].startswith("too slow")
    assert sorted(k for k in st["layers"] if k.startswith("6l-swta/")) == \
        [f"6l-swta/block{i}" for i in range(5)]
    assert not list(work.glob("6l-*/emb_block*"))  # per-layer features freed
    assert st["variants"]["init-radius-5"]["model_kwargs"] == {"init_radius": 5.0}
    assert not (work / "c3-init-radius-5" / "emb_train").exists()
    assert set(st["speed"]["step_rates"]) >= {"hebbian_fp32", "hebbian_bf16", "backprop_fp32"}
    assert st["speed"]["bf16_epoch"]["images"] == 36


def test_the_readme_section_is_rewritten_from_the_results(repro_run):
    st, text = repro_run["st"], repro_run["text"]
    assert "\nold\n" not in text and text.endswith("tail\n")
    assert f"| Hebbian (softhebb) | {st['softhebb']['hebbian']['readout_top1']:.2f} ± " in text
    assert "| Hebbian | propagate | not run yet | not run yet | not run yet |" in text
    assert "Convergence after the epoch" in text and "| init-radius-5 |" in text
    assert "| Hebbian + PCA-whitening | 3 |" in text and "Target kNN top-1 ≥ 70.0: " in text
    assert "too slow for this CPU, not run" in text and "| swta | block4 | 16 |" in text


def test_reruns_keep_finished_results_and_redo_only_what_is_asked(repro_run):
    repro, settings, argv, results = (repro_run[k] for k in ("repro", "settings", "argv",
                                                               "results"))
    st = repro_run["st"]
    before = results.read_text()
    repro.main([*argv, "--stage", "softhebb", "few-labels"], settings)
    assert results.read_text() == before
    old = st["protocols"]["hebbian/0.5"]  # --protocols redoes some 3b cells, keeps the others
    repro.main([*argv, "--stage", "protocols", "--force", "--protocols", "propagate"], settings)
    redone = json.loads(results.read_text())["stages"]["protocols"]["hebbian/0.5"]
    for protocol in ("knn", "linear"):
        assert redone[protocol] == {**old[protocol], "git_commit": old["git_commit"]}
    assert set(redone["propagate"]["prior_weight"]) == {"0"} and redone["finished"] >= old["finished"]
    repro.main([*argv, "--stage", "few-labels", "--archs", "6l-scratch", "--budgets", "0.25"],
               settings)  # --archs and --budgets narrow a session's few-label work
    added = set(json.loads(results.read_text())["stages"]["few-labels"]) - set(st["few-labels"])
    assert added == {"6l-scratch/0.25/seed0"}


def test_a_missing_data_root_is_named(repro_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="train/ and test/"):
        repro_run["repro"].main([str(tmp_path / "nowhere"), "--results", str(tmp_path / "r.json"),
                                 "--readme", ""], repro_run["settings"])


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
