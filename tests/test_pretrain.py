import importlib
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from hebbret import cli
from hebbret.models import create_model
from hebbret.pretrain import NonFiniteUpdate, hebbian_step, pretrain, training_log
from hebbret.runs import load_run

from .conftest import TINY_C3
from .test_data import write_bad_files

# the module, not the function `hebbret.pretrain` that shadows it as a package attribute
pretrain_mod = importlib.import_module("hebbret.pretrain")
TINY = dict(model_kwargs=TINY_C3, img_size=16, batch_size=4, quiet=True)


def test_pretrain_writes_a_run_dir_and_learns(image_folder, tmp_path):
    out = pretrain(str(image_folder), out=str(tmp_path / "run"), epochs=2, **TINY)
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "model.json", "config.json",
                                                "log.jsonl", "state.pt"}
    assert not list(out.glob(".*tmp*"))
    card = json.loads((out / "model.json").read_text())
    assert card["architecture"] == "hebb_softhebb_c3" and card["rule"] == "softhebb"
    assert card["training"]["images_seen"] == 2 * 24
    model, _ = load_run(out)
    torch.manual_seed(0)  # the run's seed: the same initial weights
    init = create_model("hebb_softhebb_c3", in_chans=3, img_size=16, **TINY_C3)
    for trained, initial in zip(model.hebb_layers(), init.hebb_layers(), strict=True):
        assert not torch.allclose(trained.weight, initial.weight)
    # SoftHebb pulls neurons from their initial radius (25) towards the unit sphere
    norms = model.hebb_layers()[0].weight.flatten(1).norm(dim=1)
    assert norms.mean() < 25 * 0.98
    rows = training_log(out)
    assert [r["step"] for r in rows] == list(range(1, 13))


@pytest.mark.parametrize("mode", ["consecutive", "greedy"])
def test_resume_after_a_kill_ends_with_the_same_weights(image_folder, tmp_path, monkeypatch, mode):
    common = dict(epochs=2, checkpoint_every=2, seed=7, mode=mode, **TINY)
    reference = pretrain(str(image_folder), out=str(tmp_path / "whole"), **common)

    real_step = pretrain_mod.hebbian_step
    calls = {"n": 0}

    def dying_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("killed")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(pretrain_mod, "hebbian_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        pretrain(str(image_folder), out=str(tmp_path / "killed"), **common)
    monkeypatch.setattr(pretrain_mod, "hebbian_step", real_step)
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    with pytest.raises(FileExistsError, match="--resume"):
        pretrain(str(image_folder), out=str(tmp_path / "killed"), **common)
    resumed = pretrain(str(image_folder), out=str(tmp_path / "killed"), resume=True, **common)

    a, b = load_file(reference / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    steps = [r["step"] for r in training_log(resumed)]
    assert steps == list(range(1, len(steps) + 1)) == [r["step"] for r in training_log(reference)]


def test_resume_refuses_changed_settings_and_missing_state(image_folder, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        pretrain(str(image_folder), out=str(out), resume=True, **TINY)
    pretrain(str(image_folder), out=str(out), epochs=1, **TINY)
    with pytest.raises(ValueError, match="seed: 0 -> 1"):
        pretrain(str(image_folder), out=str(out), epochs=1, seed=1, resume=True, **TINY)


def test_non_finite_update_stops_and_keeps_last_good_checkpoint(image_folder, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(NonFiniteUpdate, match="non-finite .* step .*keeps the last good checkpoint"):
        pretrain(str(image_folder), out=str(out), rule="hpca", lr=[1e30], checkpoint_every=1,
                 epochs=3, **TINY)
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["position"]["global_step"] >= 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (out / "model.safetensors").exists()


def test_bad_images_are_skipped_and_counted_in_the_run_log(image_folder, tmp_path):
    n_bad = write_bad_files(image_folder / "class_1")
    out = pretrain(str(image_folder), out=str(tmp_path / "run"), epochs=2, **TINY)
    assert training_log(out)[-1]["skipped_files"] == n_bad
    card = json.loads((out / "model.json").read_text())
    assert len(card["training"]["skipped_files"]) == n_bad
    assert card["training"]["images_seen"] == 2 * 24


@pytest.mark.parametrize("rule", ["hpca", "swta", "none"])
def test_fasthebb_6l_trains_with_its_rules_on_grayscale(tmp_path, rule):
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    out = pretrain(str(tmp_path), out=str(tmp_path / "run"), model="hebb_fasthebb_6l", rule=rule,
                   in_chans=1, img_size=24, batch_size=3, quiet=True,
                   model_kwargs={"widths": [4, 4, 4, 4, 8]})
    model, card = load_run(out)
    assert card["input"]["in_chans"] == 1 and card["rule"] == rule
    moved = [bool(torch.count_nonzero(layer.weight)) for layer in model.hebb_layers()]
    assert all(moved)


def test_cli_pretrain_config_file_and_show_filters(image_folder, tmp_path, caplog):
    cfg = tmp_path / "p.toml"
    cfg.write_text('[pretrain]\nepochs = 1\nbatch_size = 6\nimg_size = 16\n'
                   'model_kwargs = { widths = [8, 16, 32] }\n')
    out = tmp_path / "run"
    rc = cli.main(["pretrain", str(image_folder), "--config", str(cfg), "--out", str(out),
                   "--seed", "3", "--quiet"])
    assert rc == 0
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["batch_size"] == 6 and resolved["seed"] == 3 and resolved["epochs"] == 1
    assert cli.main(["show-filters", str(out)]) == 0
    with Image.open(out / "filters.png") as img:
        assert img.mode == "RGB" and img.width > 20 and img.height > 20
    assert cli.main(["pretrain", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "neither an existing folder" in caplog.text


def test_bf16_autocast_keeps_fp32_weights_and_a_close_update(image_folder, tmp_path):
    torch.manual_seed(0)
    model = create_model("hebb_softhebb_c3", img_size=16, **TINY_C3)
    x = torch.rand(6, 3, 16, 16)
    layer = model.hebb_layers()[1]
    h = model.forward_blocks(x, upto=0)
    exact = layer.hebbian_delta(h)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = layer.hebbian_delta(h)
    assert low.dtype == torch.float32 and not torch.equal(low, exact)  # bf16 Yᵀ X did run
    assert (low - exact).norm() / exact.norm() < 2e-2
    out = pretrain(str(image_folder), out=str(tmp_path / "bf16"), precision="bf16", **TINY)
    model, card = load_run(out)
    assert card["training"]["precision"] == "bf16"
    assert all(w.dtype == torch.float32 for w in model.state_dict().values() if w.is_floating_point())
    with pytest.raises(ValueError, match="precision"):
        pretrain(str(image_folder), out=str(tmp_path / "x"), precision="fp8", **TINY)


def test_a_greedy_step_keeps_the_finished_blocks_batchnorm_statistics():
    torch.manual_seed(0)
    model = create_model("hebb_softhebb_c3", img_size=16, **TINY_C3).train()
    layers = model.hebb_layers()
    opt = torch.optim.SGD([layer.weight for layer in layers], lr=0.01)
    stats = [b[0].running_mean.clone() for b in model.blocks]  # block i opens with its BN
    hebbian_step(model, opt, torch.rand(4, 3, 16, 16), active=[1])
    assert torch.equal(model.blocks[0][0].running_mean, stats[0])  # finished block: eval mode
    assert not torch.equal(model.blocks[1][0].running_mean, stats[1])  # the learning block
    assert all(b.training for b in model.blocks)  # modes restored
    hebbian_step(model, opt, torch.rand(4, 3, 16, 16), active=[0, 1, 2])
    assert not torch.equal(model.blocks[0][0].running_mean, stats[0])
