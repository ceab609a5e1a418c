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
labels_per_class = 3
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
    assert set(results["rows"]) == {"hebbian", "random", "scratch"}
    for row in results["rows"].values():
        assert 0 <= row["finetuned_top1"] <= 100 and 0 <= row["mAP"] <= 100
    table = (report / "results.md").read_text()
    assert "| hebbian |" in table and "| scratch |" in table
    assert "| hebbian |" in capsys.readouterr().out
    with Image.open(report / "filters.png") as img:
        assert img.width > 10
    with Image.open(report / "retrieval.png") as img:
        # 2 query rows; each tile is 32*3 + 8 px: query + gap + 8 results
        assert img.size == (9 * (96 + 8) + 12, 2 * (96 + 8 + 8))
    chosen = (tmp_path / "out" / "hebbian" / "finetune" / "labeled_items.jsonl").read_text()
    assert len(chosen.splitlines()) == 9


def test_shipped_configs_load():
    assert load_run_config().data == "fashion-mnist-mini"
    cifar = load_run_config("cifar10", data_root="/data/cifar10")
    assert cifar.label_fraction == 0.01 and cifar.labels_per_class is None
    assert load_run_config("fashion-mnist").data == "fashion-mnist"
