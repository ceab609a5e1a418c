"""The self-supervised backprop baseline: a real SimCLR run (lightly) for a budget, saved as an
ordinary run dir, resumed after a kill."""

import json
import logging
import sys

import numpy as np
import pytest
import torch

from hebbret import cli
from hebbret.embed import extract_embeddings, load_embeddings
from hebbret.runs import load_run

from .conftest import TINY_C3, write_image_folder

ssl = pytest.importorskip("hebbret.ssl")
pytest.importorskip("lightly")
pytestmark = pytest.mark.slow  # real training for a wall-clock budget: CI's second step


def test_simclr_trains_for_its_budget_and_writes_a_run_dir(tmp_path):
    data = write_image_folder(tmp_path / "imgs", classes=3, per_class=8, size=16)
    (data / "class_1" / "broken.png").write_bytes(b"not a png")  # skipped, not fatal
    run = ssl.train_ssl(str(data), model_kwargs=TINY_C3, budget_s=2.0, batch_size=8,
                        descriptor_dims=8, out=str(tmp_path / "ssl"), quiet=True)
    model, card = load_run(run)
    t = card.training
    assert (t["kind"], t["method"], t["img_size"], t["in_chans"]) == ("ssl", "simclr", 16, 3)
    assert t["train_seconds"] >= 2.0 and t["steps"] >= 1
    assert t["images_seen"] <= 8 * t["steps"] and np.isfinite(t["loss_last"])
    assert card.embedding.dims == 8 and card.rule == "none"
    x, items, meta = load_embeddings(extract_embeddings(run, data, tmp_path / "emb", quiet=True))
    assert x.shape == (24, 8) and meta["skipped_files"] == 1  # embed/index treat it as any run


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_a_killed_run_resumes_and_trains_to_its_budget(tmp_path, monkeypatch, method):
    data = write_image_folder(tmp_path / "imgs", classes=2, per_class=8, size=16)
    out = tmp_path / "ssl"
    opts = dict(method=method, model_kwargs=TINY_C3, batch_size=8, descriptor_dims=0,
                out=str(out), quiet=True)
    real = ssl._save_state

    def save_then_die(*args):
        real(*args)
        raise KeyboardInterrupt  # killed right after its first checkpoint

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(ssl, "_save_state", save_then_die)
        ssl.train_ssl(str(data), budget_s=30.0, checkpoint_every_s=0.0, **opts)
    assert (out / "state.pt").exists() and not (out / "model.json").exists()
    state = torch.load(out / "state.pt", weights_only=True)
    nets, first = state["nets"], state["position"]["seconds"]
    teacher = {k: v.clone() for k, v in nets.items() if k.startswith("model_m.")}
    assert bool(teacher) == (method == "byol")  # BYOL's momentum networks are checkpointed
    run = ssl.train_ssl(str(data), budget_s=first + 1.0, resume=True, **opts)
    t = load_run(run)[1].training
    # the card keeps seconds to 2 decimals: a run that stopped at 1.0726 s reads 1.07
    assert t["steps"] >= 2 and t["train_seconds"] >= first + 1.0 - 0.005 and t["method"] == method
    after = torch.load(out / "state.pt", weights_only=True)["nets"]
    moved = [not torch.equal(after[k], v) for k, v in teacher.items() if v.is_floating_point()]
    assert any(moved) == (method == "byol")  # the teacher resumed and kept moving


def test_the_command_line_runs_it_and_names_a_missing_extra(tmp_path, monkeypatch, caplog):
    data = write_image_folder(tmp_path / "imgs", classes=2, per_class=6, size=16)
    assert cli.main(["ssl", str(data), "--model-kwargs", json.dumps(TINY_C3), "--budget-s", "1",
                     "--batch-size", "6", "--descriptor-dims", "0", "--out",
                     str(tmp_path / "run"), "--quiet"]) == 0
    assert (tmp_path / "run" / "model.json").exists()
    monkeypatch.setitem(sys.modules, "lightly", None)  # as if the extra were not installed
    with caplog.at_level(logging.ERROR):
        assert cli.main(["ssl", str(data), "--out", str(tmp_path / "other"), "--quiet"]) == 2
    assert "pip install 'hebbret[ssl]'" in caplog.text
    assert not (tmp_path / "other").exists()


def test_a_byol_resnet_run_is_embedded_indexed_and_evaluated_like_any_run(tmp_path, capsys):
    data = write_image_folder(tmp_path / "imgs", classes=2, per_class=6, size=16)
    run, emb, idx = tmp_path / "run", tmp_path / "emb", tmp_path / "idx"
    assert cli.main(["ssl", str(data), "--method", "byol", "--model", "resnet18_small",
                     "--budget-s", "1", "--batch-size", "6", "--out", str(run), "--quiet"]) == 0
    model, card = load_run(run)  # rebuilt from its card like a Hebbian run
    assert (card.architecture, card.num_features, card.rule) == ("resnet18_small", 512, "none")
    assert card.embedding.pool == "avg" and card.training["method"] == "byol"
    for argv in (["embed", str(run), str(data), "--out", str(emb), "--quiet"],
                 ["index", "build", str(emb), "--out", str(idx)],
                 ["eval", "knn", str(emb), str(emb), "--k", "3", "--out", str(tmp_path / "k.json")]):
        assert cli.main(argv) == 0, argv
    x, items, _ = load_embeddings(emb)
    assert x.shape == (12, card.embedding.dims) and np.isfinite(x).all() and x.std(0).max() > 0
    knn = json.loads((tmp_path / "k.json").read_text())
    assert 0 <= knn["k"]["3"]["top1"] <= 100
    capsys.readouterr()
    assert cli.main(["search", str(idx), "--image", str(data / "class_0" / "img_1.png"),
                     "--k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["results"][0]["path"] == "class_0/img_1.png"
