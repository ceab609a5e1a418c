import json
import logging
import sys
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from hebbret import cli
from hebbret.config import RunConfig, load_run_config
from hebbret.data import Survey, detail_lost, survey
from hebbret.eval import evaluate
from hebbret.pipeline import choose_inputs, split_folder
from hebbret.runs import read_card

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
linear_max_iter = 20
knn_k = 5
retrieval_k = 5
queries_shown = 2
out = "{tmp_path / 'out'}"
""")
    assert cli.main(["run", str(cfg), "--data-root", str(data), "--quiet"]) == 0
    report = tmp_path / "out" / "report"
    results = json.loads((report / "results.json").read_text())
    assert set(results["rows"]) == {"hebbian", "random"}
    for variant, row in results["rows"].items():  # the report's mAP is the embeddings' own
        emb = tmp_path / "out" / variant
        ret = evaluate("retrieval", str(emb / "emb_train"), str(emb / "emb_test"))
        assert row["mAP"] == pytest.approx(ret["mAP"], abs=0.01)
        assert set(row["fewshot"]) == {"knn", "linear", "propagate", "full"}
        # each backbone chose its views on held-out training rows, and its card says which
        assert set(row["views_knn"]) == {"h", "none"}
        assert row["views"] == max(row["views_knn"], key=row["views_knn"].get)
        assert read_card(emb / "pretrain").embedding.flip == row["views"]
        # the training images' embeddings came with the descriptor PCA's sample, not from embed
        record = json.loads((emb / "pretrain.json").read_text())
        assert "embed_train_s" not in record and "embed_test_s" in record
        for summary in row["fewshot"].values():  # two labeled subsets, each scored
            assert summary["n"] == 2 and len(summary["values"]) == 2
            assert summary["mean"] == pytest.approx(sum(summary["values"]) / 2)
    conv = results["rows"]["hebbian"]["convergence"]
    assert [la["layer"] for la in conv["layers"]] == [0, 1, 2]
    assert all(la["distance"] > 0 for la in conv["layers"])
    assert results["verdict"].startswith("With few labels")
    table = (report / "results.md").read_text()
    assert "| Hebbian |" in table and "| random init |" in table and "**Convergence**" in table
    assert "**Descriptor views** (kNN top-1 of a held-out fifth of the PCA's sample" in table
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


def gray_folder(root, classes=3, per_class=10, size=12):
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            img = (rng.random((size, size)) * 60 + 60 * c).astype(np.uint8)
            Image.fromarray(img, mode="L").save(root / f"c{c}" / f"{i}.png")
    return root


def small_config(tmp_path, model_kwarg: str = "", *lines: str):
    """A `hebbret run` config for tiny folders: a narrow net, 4 steps, one seed, OUT in tmp."""
    cfg = tmp_path / "small.toml"
    kwargs = ", ".join(["widths = [8, 16, 32]"] + [model_kwarg] * bool(model_kwarg))
    cfg.write_text("\n".join(["[run]", f"model_kwargs = {{ {kwargs} }}", "pretrain_steps = 4",
                               *lines, "labels_per_class = 2", 'protocols = ["knn", "linear"]',
                               "seeds = [0]", "linear_max_iter = 20", "knn_k = 3",
                               "retrieval_k = 3", "queries_shown = 1",
                               f'out = "{tmp_path / "out"}"']) + "\n")
    return cfg


def test_run_on_one_labeled_folder_splits_it_and_takes_its_format(tmp_path, capsys):
    folder = gray_folder(tmp_path / "my photos")  # a space in the path
    cfg = small_config(tmp_path)
    assert cli.main(["run", str(folder), "--config", str(cfg), "--quiet"]) == 0
    results = json.loads((tmp_path / "out" / "report" / "results.json").read_text())
    split = results["data"]["split"]
    assert (split["train"], split["test"], split["seed"]) == (24, 6, 0)  # 2 of 10 per class
    assert "split for this run: 24 train / 6 test images, 20% of every class, seed 0" in \
        capsys.readouterr().out
    card = json.loads((tmp_path / "out" / "hebbian" / "pretrain" / "model.json").read_text())
    assert card["input"]["in_chans"] == 1 and card["input"]["img_size"] == [12, 12]
    test_files = {p.name for p in (tmp_path / "out" / "data" / "test").rglob("*.png")}
    train_files = {p.relative_to(tmp_path / "out" / "data" / "train")
                   for p in (tmp_path / "out" / "data" / "train").rglob("*.png")}
    assert len(test_files) <= 6 and len(train_files) == 24


def test_split_is_stratified_seeded_and_reused(tmp_path):
    folder = gray_folder(tmp_path / "imgs", classes=2, per_class=5)
    a = split_folder(folder, tmp_path / "a", seed=1)
    b = split_folder(folder, tmp_path / "b", seed=1)
    assert a == b and (a["train"], a["test"]) == (8, 2)
    for c in ("c0", "c1"):
        assert len(list((tmp_path / "a" / "test" / c).iterdir())) == 1
    stamp = (tmp_path / "a" / "split.json").stat().st_mtime_ns
    split_folder(folder, tmp_path / "a", seed=1)
    assert (tmp_path / "a" / "split.json").stat().st_mtime_ns == stamp
    assert split_folder(folder, tmp_path / "a", seed=2)["seed"] == 2  # another seed: re-split


def test_folder_forms_that_cannot_run_are_named(tmp_path, caplog):
    one = gray_folder(tmp_path / "one", classes=1)
    assert cli.main(["run", str(one), "--out", str(tmp_path / "o1")]) == 2
    assert "holds one class" in caplog.text
    half = tmp_path / "half"
    gray_folder(half / "train", classes=2)
    assert cli.main(["run", str(half), "--out", str(tmp_path / "o2")]) == 2
    assert "has train/ but not test/" in caplog.text
    assert cli.main(["run", "--data-root", str(one), "--out", str(tmp_path / "o3")]) == 2
    assert f"to run on your folder: hebbret run {one}" in caplog.text
    assert cli.main(["run", str(tmp_path / "nope.toml")]) == 2
    assert "config file not found" in caplog.text


def test_inputs_are_chosen_from_the_images_and_every_setting_given_wins():
    thumbs = Survey(1, ((28, 28),) * 5, 5)
    # as the solar cells measure: detail down to 96-128 px
    photos = Survey(1, ((300, 300),) * 4 + ((310, 400),), 5,
                    ((32, 0.17), (64, 0.04), (96, 0.014), (128, 0.006), (160, 0.004)))
    enlarged = Survey(3, ((128, 128),) * 5, 5, ((32, 0.007), (64, 0.0014), (96, 0.001),
                                                (128, 0.0), (160, 0.0)))
    mixed = Survey(3, ((70, 120), (80, 90), (60, 200)), 3)  # detail not measured
    cfg = RunConfig(model_kwargs={"init_radius": 5.0})
    small = choose_inputs(cfg, thumbs, "cpu")
    assert (small.img_size, small.model, small.in_chans) == (28, "hebb_softhebb_c3", 1)
    assert "the images' own size" in small.reasons[0]
    assert "or of the image alone, whichever has the higher kNN" in small.reasons[-1]
    alone = choose_inputs(replace(cfg, flip="none"), thumbs, "cpu")
    assert alone.flip == "none" and "summed" not in alone.reasons[-1]
    assert "flatten of features (the backbone's default)" in alone.reasons[-1]
    for other in (replace(cfg, pool="avg"), replace(cfg, descriptor_dims=0)):  # no choice made
        mine = choose_inputs(other, thumbs, "cpu")
        assert mine.flip is None and "whichever" not in mine.reasons[-1]
        assert "summed over the image and its mirror image" in mine.reasons[-1]
    big = choose_inputs(cfg, photos, "cpu")
    assert (big.img_size, big.model) == (96, "hebb_softhebb_c4")
    assert big.model_kwargs == {"init_radius": 5.0, "widths": [24, 96, 384, 1536]}
    assert "median short side of 5 sampled images is 300 px" in big.reasons[0]
    assert "the largest of" in big.reasons[0] and "1.4%" in big.reasons[0]
    up = choose_inputs(cfg, enlarged, "cpu")  # 128 px images with a 32 px image's detail
    assert (up.img_size, up.model) == (32, "hebb_softhebb_c3")
    assert "lose ≤ 1% of their variance (0.7%)" in up.reasons[0]
    gpu = choose_inputs(cfg, photos, "cuda")  # full widths; 128 px keeps their detail
    assert (gpu.img_size, gpu.model, gpu.model_kwargs) == (128, "hebb_softhebb_c4",
                                                          {"init_radius": 5.0})
    sharp = replace(photos, lost=((32, 0.3), (64, 0.1), (96, 0.05), (128, 0.03), (160, 0.02)))
    assert choose_inputs(cfg, sharp, "cuda").model == "hebb_softhebb_c5"  # up to 160 px
    assert choose_inputs(cfg, mixed, "cpu").img_size == 64  # short sides 70, 80, 60
    mine = choose_inputs(RunConfig(img_size=48, model="hebb_softhebb_c3", pool="max",
                                   layer="block1+features"), photos, "cpu")
    assert (mine.img_size, mine.model, mine.pool, mine.layer) == (48, "hebb_softhebb_c3", "max",
                                                                   "block1+features")
    assert "(--img-size)" in mine.reasons[0] and "(--model)" in mine.reasons[1]


def test_detail_lost_tells_an_enlarged_image_from_a_sharp_one():
    rng = np.random.default_rng(0)
    # a 32 px image with structure at its scale (not pixel noise), enlarged 4×
    small = Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).resize(
        (32, 32), Image.Resampling.BICUBIC)
    enlarged = detail_lost(small.resize((128, 128), Image.Resampling.BILINEAR))
    sharp = detail_lost(Image.fromarray(rng.integers(0, 256, (128, 128), dtype=np.uint8)))
    assert enlarged[32] < 0.01 < 0.5 < sharp[32]  # white noise: most of it is lost
    assert enlarged[128] == sharp[128] == enlarged[160] == 0.0  # at its own side: nothing
    assert 0 < sharp[96] < sharp[64] < sharp[32]


def test_survey_finds_the_median_short_side_and_the_detail(tmp_path):
    for i, (w, h) in enumerate([(300, 200), (120, 400), (64, 64)]):
        (tmp_path / "c").mkdir(exist_ok=True)
        Image.new("L", (w, h)).save(tmp_path / "c" / f"{i}.png")
    seen = survey(tmp_path)
    assert seen.in_chans == 1 and seen.short_side == 120 and seen.native_size is None
    assert sorted(seen.sizes) == [(64, 64), (200, 300), (400, 120)]
    assert survey("fashion-mnist-mini").native_size == (28, 28)
    assert seen.lost_at(32) == 0.0 and seen.lost_at(160) == 0.0  # flat images lose nothing


def test_run_with_the_ssl_baseline_adds_a_byol_row_at_the_hebbian_wall_clock(tmp_path, capsys):
    pytest.importorskip("lightly")
    folder = write_image_folder(tmp_path / "imgs", classes=3, per_class=8)
    cfg = small_config(tmp_path, "init_radius = 5.0", "descriptor_dims = 0")
    argv = ["run", str(folder), "--config", str(cfg), "--baselines", "ssl", "--quiet"]
    assert cli.main(argv) == 0
    results = json.loads((tmp_path / "out" / "report" / "results.json").read_text())
    assert list(results["rows"]) == ["hebbian", "random", "ssl"]
    ssl = results["rows"]["ssl"]
    hebbian = json.loads((tmp_path / "out" / "hebbian" / "pretrain" / "model.json").read_text())
    assert ssl["method"] == "byol" and ssl["pretrain_steps"] >= 1
    assert ssl["budget_s"] == pytest.approx(max(hebbian["training"]["wall_seconds"], 0.01))
    card = json.loads((tmp_path / "out" / "ssl" / "pretrain" / "model.json").read_text())
    assert card["architecture"] == hebbian["architecture"] and card["rule"] == "none"
    assert "init_radius" not in card["training"]["config"]["model_kwargs"]  # Hebbian-only start
    assert 0 <= ssl["knn_top1"] <= 100 and 0 <= ssl["mAP"] <= 100 and set(ssl["fewshot"]) == {
        "knn", "linear"}
    assert "Self-supervised BYOL on the same net" in results["verdict"]
    table = capsys.readouterr().out
    assert "| BYOL (backprop, same wall clock) |" in table and results["verdict"] in table
    ssl_card = (tmp_path / "out" / "ssl" / "pretrain" / "model.json").stat().st_mtime_ns
    assert cli.main(argv) == 0  # rerun: every stage is complete and reused
    assert (tmp_path / "out" / "ssl" / "pretrain" / "model.json").stat().st_mtime_ns == ssl_card


def test_the_ssl_baseline_without_lightly_stops_before_training(tmp_path, monkeypatch, caplog):
    folder = write_image_folder(tmp_path / "imgs", classes=2, per_class=4)
    monkeypatch.setitem(sys.modules, "lightly", None)  # as if the extra were not installed
    with caplog.at_level(logging.ERROR):
        assert cli.main(["run", str(folder), "--baselines", "ssl", "--out",
                         str(tmp_path / "out"), "--quiet"]) == 2
    assert "pip install 'hebbret[ssl]'" in caplog.text
    assert not (tmp_path / "out").exists()  # nothing written, nothing trained
    monkeypatch.delitem(sys.modules, "lightly")
    pytest.importorskip("lightly")
    caplog.clear()
    with caplog.at_level(logging.ERROR):  # a named dataset is no folder to train BYOL on
        assert cli.main(["run", "--baselines", "ssl", "--out",
                         str(tmp_path / "out")]) == 2
    assert "is a named dataset" in caplog.text and not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="unknown baselines"):
        RunConfig(baselines=["dino"])


def test_the_verdict_compares_the_ssl_row_with_hebbian_either_way():
    from hebbret.report import verdict

    def few(knn, linear):
        return {"knn": {"mean": knn, "std": 1.0}, "linear": {"mean": linear, "std": 0.5}}

    rows = {"hebbian": {"fewshot": few(40, 42), "mAP": 18.0},
            "random": {"fewshot": few(30, 33), "mAP": 10.0}}
    alone = verdict(rows)
    assert alone.startswith("With few labels the best is Hebbian + linear") and "BYOL" not in alone
    rows["ssl"] = {"fewshot": few(35, 44), "mAP": 19.5, "method": "byol", "budget_s": 267.3,
                   "pretrain_steps": 50}
    text = verdict(rows)
    assert text.startswith("With few labels, between Hebbian and random init, the best is Hebbian")
    assert ("Self-supervised BYOL on the same net for the same 267 s of training (50 steps) gets "
            "linear 44.00 ± 0.50 %; that is 2.00 points above Hebbian's best (mAP: Hebbian "
            "18.00, BYOL 19.50).") in text
    rows["ssl"]["fewshot"] = few(39, 41)
    assert "gets linear 41.00 ± 0.50 %; Hebbian's best is 1.00 points above it" in verdict(rows)
