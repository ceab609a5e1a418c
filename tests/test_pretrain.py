import json
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from hebbret import cli
from hebbret import pretraining as pretrain_mod
from hebbret.models import create_model
from hebbret.pretraining import NonFiniteUpdate, hebbian_step, pretrain, training_log
from hebbret.runs import load_run

from .conftest import TINY_C3
from .test_data import write_bad_files

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


def kill_at_step(n: int, monkeypatch, data: str, **kwargs) -> None:
    """Run pretrain(data, **kwargs) and kill it (KeyboardInterrupt) as Hebbian step n starts."""
    real_step = pretrain_mod.hebbian_step
    calls = {"n": 0}

    def dying_step(*args, **kw):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt("killed")
        return real_step(*args, **kw)

    monkeypatch.setattr(pretrain_mod, "hebbian_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        pretrain(data, **kwargs)
    monkeypatch.setattr(pretrain_mod, "hebbian_step", real_step)


@pytest.mark.parametrize("mode,stem", [("consecutive", {}), ("greedy", {}),
                                       ("consecutive", {"whiten_patch": 3})])
def test_resume_after_a_kill_ends_with_the_same_weights(image_folder, tmp_path, monkeypatch, mode,
                                                        stem):
    common = dict(epochs=2, checkpoint_every=2, seed=7, mode=mode,
                  **{**TINY, "model_kwargs": {**TINY_C3, **stem}})
    reference = pretrain(str(image_folder), out=str(tmp_path / "whole"), **common)

    kill_at_step(5, monkeypatch, str(image_folder), out=str(tmp_path / "killed"), **common)
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
    assert card.input.in_chans == 1 and card.rule == rule
    moved = [bool(torch.count_nonzero(layer.weight)) for layer in model.hebb_layers()]
    assert all(moved)


def test_cli_pretrain_config_file_and_show_filters(image_folder, tmp_path, caplog):
    cfg = tmp_path / "p.toml"
    cfg.write_text('[pretrain]\nepochs = 1\nbatch_size = 6\nimg_size = 16\n'
                   'model_kwargs = { widths = [8, 16, 32] }\n')
    out = tmp_path / "run"
    rc = cli.main(["pretrain", str(image_folder), "--config", str(cfg), "--out", str(out),
                   "--seed", "3", "--budget-s", "600", "--quiet"])
    assert rc == 0
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["batch_size"] == 6 and resolved["seed"] == 3 and resolved["epochs"] == 1
    assert resolved["budget_s"] == 600
    assert cli.main(["show-filters", str(out)]) == 0
    with Image.open(out / "filters.png") as img:
        assert img.mode == "RGB" and img.width > 20 and img.height > 20
    assert cli.main(["pretrain", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "neither an existing folder" in caplog.text
    assert cli.main(["pretrain", str(image_folder), "--budget-s", "0", "--out",
                     str(tmp_path / "y")]) == 2
    assert "budget_s must be positive" in caplog.text


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
    out = pretrain(str(image_folder), out=str(tmp_path / "bf16"), precision="bf16", epochs=1, **TINY)
    model, card = load_run(out)
    assert card.training["precision"] == "bf16"
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


def test_a_step_budget_runs_part_of_an_epoch_and_the_card_reports_convergence(
        image_folder, tmp_path, caplog):
    # 24 images at batch 4: 6 steps an epoch, so 15 steps = 2 epochs and half of a third
    with caplog.at_level("WARNING", logger="hebbret.pretraining"):
        out = pretrain(str(image_folder), out=str(tmp_path / "run"), steps=15, **TINY)
    rows = training_log(out)
    assert [r["epoch"] for r in rows] == [0] * 6 + [1] * 6 + [2] * 3
    assert "distance" in rows[-1]["layers"][0]  # the last step of a phase is always measured
    card = json.loads((out / "model.json").read_text())
    assert card["training"]["steps"] == 15 and card["training"]["images_seen"] == 60
    conv = card["training"]["convergence"]
    model, _ = load_run(out)
    for layer, measured in zip(model.hebb_layers(), conv["layers"], strict=True):
        norms = layer.weight.detach().flatten(1).norm(dim=1)
        assert measured["distance"] == pytest.approx(float((norms - 1).abs().mean()), rel=1e-5)
        assert measured["converged"] is False  # 15 steps from radius 25 are far from the sphere
    assert conv["converged"] is False
    assert "has not converged" in caplog.text


def test_the_default_budget_repeats_a_small_collection_up_to_min_steps(image_folder, tmp_path,
                                                                       monkeypatch):
    from hebbret.config import PretrainConfig
    from hebbret.models import softhebb

    real = softhebb._cfg

    def with_min_steps(*args):
        cfg = real(*args)
        cfg["hebb"] = {**cfg["hebb"], "min_steps": 10}
        return cfg

    monkeypatch.setattr(softhebb, "_cfg", with_min_steps)
    base = dict(data=str(image_folder), model_kwargs=TINY_C3, img_size=16, batch_size=4)
    resolved, _ = pretrain_mod._resolve(PretrainConfig(**base))
    assert resolved["steps"] == 10 and resolved["epochs"] == 2  # 6 steps an epoch
    resolved, _ = pretrain_mod._resolve(PretrainConfig(**base, epochs=1))
    assert resolved["steps"] == 6  # explicit epochs win
    resolved, _ = pretrain_mod._resolve(PretrainConfig(**base, steps=3))
    assert resolved["steps"] == 3 and resolved["epochs"] == 1


def test_resume_mid_epoch_under_a_step_budget(image_folder, tmp_path, monkeypatch):
    common = dict(steps=9, checkpoint_every=4, seed=3, **TINY)
    reference = pretrain(str(image_folder), out=str(tmp_path / "whole"), **common)
    kill_at_step(8, monkeypatch, str(image_folder), out=str(tmp_path / "killed"), **common)
    resumed = pretrain(str(image_folder), out=str(tmp_path / "killed"), resume=True, **common)
    a, b = load_file(reference / "model.safetensors"), load_file(resumed / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    assert [r["step"] for r in training_log(resumed)] == list(range(1, 10))
    # the drift is measured against the weights saved at the last measurement: resume-exact
    def drifts(run):
        return [(r["step"], s["drift"]) for r in training_log(run) for s in r["layers"]
                if "drift" in s]

    assert [d for _, d in drifts(reference)] == pytest.approx([d for _, d in drifts(resumed)],
                                                              rel=1e-5)
    assert [s for s, _ in drifts(reference)] == [s for s, _ in drifts(resumed)] == [9] * 3


def test_the_logged_drift_is_how_far_the_neurons_turned_between_measurements(image_folder,
                                                                            tmp_path):
    half = pretrain(str(image_folder), out=str(tmp_path / "20"), steps=20, **TINY)
    whole = pretrain(str(image_folder), out=str(tmp_path / "40"), steps=40, **TINY)
    rows = training_log(whole)
    measured = [r["step"] for r in rows if "drift" in r["layers"][0]]
    assert measured == [20, 40]  # every MEASURE_EVERY steps and the last step
    w20 = [la.weight.detach() for la in load_run(half)[0].hebb_layers()]
    w40 = [la.weight.detach() for la in load_run(whole)[0].hebb_layers()]
    for i, (a, b) in enumerate(zip(w20, w40, strict=True)):
        ua = a / a.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        ub = b / b.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        expected = float((ub - ua).norm() / len(ub) ** 0.5)  # RMS change of unit directions
        assert rows[-1]["layers"][i]["drift"] == pytest.approx(expected, rel=1e-4)
        # scaling a layer moves no direction: norms are invisible behind BatchNorm and cosine
        mark = pretrain_mod.directions(b)
        assert float(pretrain_mod.weight_drift(3 * b, mark)) < 1e-6


def test_convergence_compares_the_recent_speed_with_the_peak_speed():
    class Layer:  # what convergence reads of a layer
        def __init__(self, name):
            from hebbret.hebb.rules import get_rule
            self.rule = get_rule(name)

    class Model:
        def hebb_layers(self):
            return [Layer("softhebb"), Layer("hpca")]

    # layer 0 slows to 5% of its peak speed, layer 1 to 80%; measured every 10 steps
    drifts0 = [1.0, 2.0, 2.0, 2.0, 1.0, 0.5, 0.2, 0.1, 0.1, 0.1]
    drifts1 = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.8, 0.8]
    rows = [{"step": s, "layers": [{"layer": 0}, {"layer": 1}]} for s in range(1, 101)]
    for j in range(10):
        rows[10 * j + 9]["layers"] = [{"layer": 0, "drift": drifts0[j]},
                                      {"layer": 1, "drift": drifts1[j], "distance": 0.3}]
    speeds = pretrain_mod.drift_speeds(rows)
    assert speeds[0] == ([10, 20, 30, 40, 50, 60, 70, 80, 90, 100], [d / 10 for d in drifts0])
    conv = pretrain_mod.convergence(rows, Model())
    first, second = conv["layers"]
    assert first["speed_ratio"] == pytest.approx(0.1 / 2.0)  # last fifth 0.1 / peak of 3-avg 2.0
    assert first["converged"] and not second["converged"]
    assert second["speed_ratio"] == pytest.approx(0.8) and second["distance"] == 0.3
    assert not conv["converged"]


def test_fixed_point_distances_of_each_rule():
    from hebbret.hebb.rules import get_rule

    q = torch.linalg.qr(torch.randn(12, 5)).Q.T  # 5 orthonormal rows
    assert float(get_rule("hpca").distance(q, q)) < 1e-5
    assert float(get_rule("hpca").distance(2 * q, q)) == pytest.approx(3.0, rel=1e-4)
    w = torch.randn(4, 3, 2, 2)
    unit = w / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert float(get_rule("softhebb").distance(unit, w)) < 1e-5
    assert float(get_rule("softhebb").distance(3 * unit, w)) == pytest.approx(2.0, rel=1e-5)
    delta = 0.1 * w
    assert float(get_rule("swta").distance(w, delta)) == pytest.approx(0.1, rel=1e-5)


def test_a_nan_planted_at_step_k_stops_there_with_nothing_non_finite_on_disk(image_folder,
                                                                            tmp_path,
                                                                            monkeypatch):
    from hebbret.hebb.layers import HebbConv2d

    real = HebbConv2d.update_direction
    calls = {"n": 0}

    def poisoned(self, delta):
        calls["n"] += 1  # 3 layers per step in consecutive mode: step 5 = calls 13..15
        out = real(self, delta)
        return out * float("nan") if calls["n"] == 14 else out

    monkeypatch.setattr(HebbConv2d, "update_direction", poisoned)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteUpdate, match=r"non-finite at step 5 \(phase 0, epoch 0\)"):
        pretrain(str(image_folder), out=str(out), checkpoint_every=3, steps=12, **TINY)
    assert [r["step"] for r in training_log(out)] == [1, 2, 3, 4]
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["position"]["global_step"] == 3  # the last checkpoint before the NaN
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (out / "model.safetensors").exists()


def test_model_card_is_typed_round_trips_and_reads_older_cards(image_folder, tmp_path):
    from hebbret.runs import CARD_VERSION, ModelCard, read_card

    out = pretrain(str(image_folder), out=str(tmp_path / "run"), epochs=1, **TINY)
    raw = json.loads((out / "model.json").read_text())
    card = read_card(out)
    assert isinstance(card, ModelCard) and card.card_version == CARD_VERSION == raw["card_version"]
    assert card.input.img_size == (16, 16) and card.embedding.layer == "features"
    assert card.to_json() == raw
    older = {k: v for k, v in raw.items() if k != "card_version"}  # cards before the field
    (out / "model.json").write_text(json.dumps(older))
    assert read_card(out).card_version == 0 and read_card(out).input == card.input
    load_run(out)  # still loads (weights checked against the card)
    (out / "model.json").write_text(json.dumps({**raw, "card_version": CARD_VERSION + 1,
                                                "new_field": 1}))
    with pytest.raises(ValueError, match="upgrade hebbret"):
        read_card(out)


def test_a_whitening_stem_is_fitted_on_the_training_images_before_hebbian_learning(image_folder,
                                                                                  tmp_path):
    out = pretrain(str(image_folder), out=str(tmp_path / "run"), steps=2,
                   **{**TINY, "model_kwargs": {**TINY_C3, "whiten_patch": 3}})
    model, card = load_run(out)
    assert card.model_args["whiten_patch"] == 3
    identity = create_model("hebb_softhebb_c3", img_size=16, whiten_patch=3, **TINY_C3).stem
    assert not torch.allclose(model.stem.weight, identity.weight)
    # the fitted stem (ε = 0.1: partly) decorrelates the channels of the images it was fitted on
    from hebbret.data import open_dataset
    ds = open_dataset(str(image_folder), in_chans=3, img_size=16)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    before = torch.corrcoef(x.permute(1, 0, 2, 3).reshape(3, -1))
    with torch.no_grad():
        after = torch.corrcoef(model.stem(x).permute(1, 0, 2, 3).reshape(3, -1))
    off = ~torch.eye(3, dtype=torch.bool)
    assert before[off].abs().max() > 0.8 and after[off].abs().max() < 0.5 * before[off].abs().max()


def test_a_wall_clock_budget_stops_training_cleanly_with_a_complete_run(image_folder, tmp_path,
                                                                         monkeypatch):
    real = pretrain_mod._step_on

    def slow_step(*args, **kwargs):
        time.sleep(0.05)  # a step of known length: ~6 fit into the 0.3 s budget
        return real(*args, **kwargs)

    monkeypatch.setattr(pretrain_mod, "_step_on", slow_step)
    out = pretrain(str(image_folder), out=str(tmp_path / "run"), steps=1000, budget_s=0.3, **TINY)
    t = load_run(out)[1].training
    assert 1 <= t["steps"] < 50 and t["wall_seconds"] >= 0.3 and t["budget_s"] == 0.3
    assert len(training_log(out)) == t["steps"]  # every step taken is logged, none after
    assert pretrain(str(image_folder), out=str(tmp_path / "run"), steps=1000, budget_s=0.3,
                    resume=True, **TINY) == out  # a spent budget is a finished run
    with pytest.raises(ValueError, match="budget_s must be positive"):
        pretrain(str(image_folder), out=str(tmp_path / "bad"), budget_s=0.0, **TINY)
