import json

from PIL import Image

from hebbret import cli
from hebbret.pipeline import load_run_config

from .conftest import write_image_folder


def test_run_on_a_tiny_config_writes_every_report_file(tmp_path, capsys):
    data = tmp_path / "data"
    write_image_folder(data / "train", classes=3, per_class=8, seed=0)
    write_image_folder(data / "test", classes=3, per_class=3, seed=1)
    cfg = tmp_path / "tiny.toml"
    # a data name that is not a named dataset plus --data-root, as `hebbret run cifar10 --data-root`
    cfg.write_text(f"""[run]
data = "my-images"
img_size = 16
model_kwargs = {{ widths = [8, 16, 32] }}
pretrain_batch_size = 6
pretrain_steps = 8
labels_per_class = 3
seeds = [0, 1]
finetune_epochs = 2
linear_epochs = 2
knn_k = 5
retrieval_k = 5
queries_shown = 2
out = "{tmp_path / 'out'}"
""")
    assert cli.main(["run", str(cfg), "--data-root", str(data), "--quiet"]) == 0
    report = tmp_path / "out" / "report"
    results = json.loads((report / "results.json").read_text())
    assert set(results["rows"]) == {"hebbian", "random"}
    for row in results["rows"].values():
        assert 0 <= row["mAP"] <= 100
        assert set(row["fewshot"]) == {"knn", "linear", "propagate", "full"}
        for summary in row["fewshot"].values():  # two labeled subsets, each scored
            assert summary["n"] == 2 and 0 <= summary["mean"] <= 100
            assert abs(summary["mean"] - sum(summary["values"]) / 2) < 1e-9
    conv = results["rows"]["hebbian"]["convergence"]
    assert [la["layer"] for la in conv["layers"]] == [0, 1, 2]
    assert all(la["distance"] > 0 for la in conv["layers"])
    assert results["verdict"].startswith("With few labels")
    table = (report / "results.md").read_text()
    assert "| Hebbian |" in table and "| random init |" in table and "**Convergence**" in table
    assert results["verdict"] in capsys.readouterr().out
    with Image.open(report / "filters.png") as img:
        assert img.width > 10
    with Image.open(report / "retrieval.png") as img:
        # 2 query rows; each tile is 32*3 + 8 px: query + gap + 8 results
        assert img.size == (9 * (96 + 8) + 12, 2 * (96 + 8 + 8))
    with Image.open(report / "convergence.png") as img:
        assert img.width > 100
    # every protocol and both backbones use the same labeled subset for a seed
    for seed in (0, 1):
        chosen = [(tmp_path / "out" / v / f"full-seed{seed}" / "labeled_items.jsonl").read_text()
                  for v in ("hebbian", "random")]
        assert len(chosen[0].splitlines()) == 9 and chosen[0] == chosen[1]


def test_shipped_configs_load():
    assert load_run_config().data == "fashion-mnist-mini"
    cifar = load_run_config("cifar10", data_root="/data/cifar10")
    assert cifar.label_fraction == 0.01 and cifar.labels_per_class is None
    assert load_run_config("fashion-mnist").data == "fashion-mnist"
