import json
import logging

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hebbret import cli
from hebbret.data import few_label_rows, open_dataset
from hebbret.finetuning import evaluate_classifier, finetune
from hebbret.pretraining import pretrain
from hebbret.runs import load_run

from .conftest import TINY_C3, write_image_folder


def test_few_label_rows_are_balanced_seeded_and_short_classes_warn(caplog):
    labels = np.array([0] * 10 + [1] * 10 + [2] * 2)
    a = few_label_rows(labels, per_class=3, seed=1)
    assert np.array_equal(a, few_label_rows(labels, per_class=3, seed=1))
    assert not np.array_equal(a, few_label_rows(labels, per_class=3, seed=2))
    with caplog.at_level(logging.WARNING):
        a = few_label_rows(labels, per_class=3, seed=1)
    assert np.bincount(labels[a]).tolist() == [3, 3, 2]
    assert "class 2 has 2 items" in caplog.text
    b = few_label_rows(labels, fraction=0.3, seed=0)  # 0.3 * 22 / 3 classes -> 2 per class
    assert np.bincount(labels[b]).tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="exactly one"):
        few_label_rows(labels)


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """One tiny Hebbian run for the module's fine-tunings (which only read it)."""
    root = tmp_path_factory.mktemp("finetune-parent")
    data = write_image_folder(root / "imgs", classes=3, per_class=10)
    with pytest.MonkeyPatch.context() as m:
        m.setenv("HEBBRET_CACHE_DIR", str(root / "cache"))
        run = pretrain(str(data), out=str(root / "hebb"), model_kwargs=TINY_C3, img_size=16,
                       batch_size=5, epochs=1, quiet=True)
    return data, run


def test_full_finetune_lowers_loss_and_writes_a_loadable_run(parent, tmp_path):
    data, run = parent
    out = finetune(run=str(run), data=str(data), labels_per_class=6, epochs=8, lr=0.01,
                   batch_size=6, augment=True, out=str(tmp_path / "ft"), quiet=True)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"]
    chosen = [json.loads(line) for line in (out / "labeled_items.jsonl").read_text().splitlines()]
    assert len(chosen) == 18 and np.bincount([c["label"] for c in chosen]).tolist() == [6, 6, 6]
    card = json.loads((out / "model.json").read_text())
    assert card["training"]["parent_run"] == str(run.resolve())
    acc = evaluate_classifier(out, str(data), split="train")
    model, card = load_run(out)  # the same accuracy, image by image
    ds = open_dataset(str(data), "train", card.input.in_chans, card.input.img_size,
                      mean=card.input.mean, std=card.input.std)
    with torch.no_grad():
        hits = sum(int(model.eval()(ds[i][0][None]).argmax(1)) == ds[i][1] for i in range(len(ds)))
    assert acc["count"] == 30 and acc["top1"] == pytest.approx(100.0 * hits / 30)
    # lr halved every epoch in the second half
    assert log[-1]["lr"] == pytest.approx(0.01 * 0.5 ** 4)


def test_augment_batch_equals_per_image_crops_and_flips():
    from hebbret.finetuning import augment_batch

    x = torch.randn(6, 3, 16, 12)
    got = augment_batch(x, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)  # the same draws, one image at a time
    pad = 1
    padded = torch.nn.functional.pad(x, (pad,) * 4, mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (6,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (6,), generator=gen)
    flip = torch.rand(6, generator=gen) < 0.5
    for i in range(6):
        crop = padded[i, :, dy[i]: dy[i] + 16, dx[i]: dx[i] + 12]
        torch.testing.assert_close(got[i], crop.flip(2) if flip[i] else crop, rtol=0, atol=0)
    assert flip.any() and not flip.all()  # both branches checked


def test_linear_mode_changes_only_the_head(parent, tmp_path):
    data, run = parent
    out = finetune(run=str(run), data=str(data), mode="linear", epochs=2, out=str(tmp_path / "lin"),
                   quiet=True)
    before, after = load_file(run / "model.safetensors"), load_file(out / "model.safetensors")
    changed = {k for k in after if not k.startswith("head") and not torch.equal(before[k], after[k])}
    assert changed == set()  # weights and BatchNorm statistics frozen
    assert not torch.equal(after["head.weight"], torch.zeros_like(after["head.weight"]))


def test_from_scratch_starts_from_random_weights(parent, tmp_path, monkeypatch):
    data, run = parent
    seen = {}
    from hebbret import finetuning as ft_mod

    real_train = ft_mod._train

    def spy(model, *args, **kwargs):
        seen["conv0"] = model.hebb_layers()[0].weight.detach().clone()
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(ft_mod, "_train", spy)
    finetune(run=str(run), data=str(data), from_scratch=True, epochs=1, out=str(tmp_path / "s"),
             seed=3, quiet=True)
    hebbian = load_file(run / "model.safetensors")["blocks.0.1.weight"]
    assert not torch.allclose(seen["conv0"], hebbian)
    torch.manual_seed(3)
    from hebbret.models import create_model
    from hebbret.runs import read_card
    card = read_card(run)
    fresh = create_model(card.architecture, **card.model_args).hebb_layers()[0].weight
    torch.testing.assert_close(seen["conv0"], fresh)


def test_cli_finetune(parent, tmp_path):
    data, run = parent
    out = tmp_path / "cli"
    assert cli.main(["finetune", str(run), str(data), "--label-fraction", "0.5", "--epochs", "1",
                     "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["label_fraction"] == 0.5
    assert cli.main(["finetune", str(run), str(tmp_path / "nothing"), "--out", str(out)]) == 2
