"""The packed image cache: bit-exact with the folder, keyed by the listing, atomic, and the
batched loaders (resident and streamed) equal to the DataLoader path."""

import os
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import hebbret.data.packed as packing
from hebbret.data import (
    EpochSampler,
    ImageFolder,
    PackedImages,
    PackedLoader,
    cache_root,
    collate,
    make_loader,
    open_dataset,
    open_packed,
)
from hebbret.data.packed import folder_key
from hebbret.pretraining import pretrain

from .conftest import TINY_C3, write_image_folder


def folder_with_a_bad_file(tmp_path):
    root = write_image_folder(tmp_path / "imgs", classes=3, per_class=5, size=20, seed=0)
    (root / "class_1" / "broken.png").write_bytes(b"not an image at all")
    return root


def test_packed_rows_equal_folder_decoding_bit_for_bit(tmp_path):
    root = folder_with_a_bad_file(tmp_path)
    folder = ImageFolder(root, 3, 16, mean=[0.5] * 3, std=[0.25] * 3)
    packed = open_packed(folder)
    assert len(packed) == len(folder) == 16 and packed.classes == folder.classes
    assert [it.path for it in packed.items] == [it.path for it in folder.items]
    for i in range(len(folder)):
        a, la, ia = folder[i]
        b, lb, ib = packed[i]
        assert (la, ia) == (lb, ib)
        if a is None:
            assert b is None and folder.items[i].path == "class_1/broken.png"
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert packed.meta["skipped"] == 1


def test_a_changed_folder_is_packed_again_and_an_unchanged_one_reused(tmp_path):
    root = write_image_folder(tmp_path / "imgs", classes=2, per_class=4, size=16)
    first = open_packed(ImageFolder(root, 3, 16))
    stamp = (first.cache_dir / "meta.json").stat().st_mtime_ns
    again = open_packed(ImageFolder(root, 3, 16))
    assert again.cache_dir == first.cache_dir
    assert (again.cache_dir / "meta.json").stat().st_mtime_ns == stamp  # not rebuilt
    dirs = {first.cache_dir}
    img = root / "class_0" / "img_0.png"
    edits = [lambda: os.utime(img, ns=(time.time_ns(), time.time_ns() + 10**9)),  # touched
             lambda: (root / "class_1" / "img_0.png").write_bytes(img.read_bytes()),  # changed
             lambda: (root / "class_1" / "new.png").write_bytes(img.read_bytes()),  # added
             lambda: (root / "class_0" / "img_3.png").unlink()]  # removed
    for edit in edits:
        edit()
        p = open_packed(ImageFolder(root, 3, 16))
        assert p.cache_dir not in dirs
        dirs.add(p.cache_dir)
    assert len(p) == 8  # 8 - 1 removed + 1 added
    # another size or channel count is another cache
    assert open_packed(ImageFolder(root, 1, 16)).cache_dir not in dirs
    assert open_packed(ImageFolder(root, 3, 12)).cache_dir not in dirs


def test_a_killed_pack_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "imgs", classes=2, per_class=4, size=16)
    folder = ImageFolder(root, 3, 16)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(packing, "write_json", killed)  # dies just before the cache is complete
        open_packed(folder)
    out = cache_root() / "packed" / folder_key(folder)[:24]
    assert not out.exists() and not list(out.parent.iterdir())  # the temporary dir is gone
    packed = open_packed(folder)
    assert packed.cache_dir == out and len(packed) == 8


def batches(loader):
    return [(b.images.clone(), b.labels.tolist(), b.indices.tolist(), b.skipped) for b in loader]


def test_resident_streamed_and_dataloader_batches_are_identical(tmp_path):
    root = folder_with_a_bad_file(tmp_path)
    folder = ImageFolder(root, 3, 16, mean=[0.4] * 3, std=[0.3] * 3)
    packed = open_packed(folder)
    def sampler():  # epoch 1 of seed 3, resumed after 5 rows
        return EpochSampler(range(len(packed)), seed=3, epoch=1, start=5)

    resident = batches(PackedLoader(packed, 4, sampler(), resident=True))
    streamed = batches(PackedLoader(packed, 4, sampler(), resident=False))
    reference = batches(DataLoader(folder, batch_size=4, sampler=sampler(), collate_fn=collate))
    assert len(resident) == len(streamed) == len(reference) == 3  # 11 rows after the 5 skipped
    for r, s, d in zip(resident, streamed, reference, strict=True):
        for a, b in ((r, d), (s, d)):
            torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
            assert a[1:] == b[1:]
    assert sum(len(b[3]) for b in reference) <= 1


def test_training_from_the_cache_gives_the_folder_s_weights(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "imgs", classes=3, per_class=6, size=16)
    (root / "class_2" / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    runs = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("HEBBRET_CACHE", flag)
        runs[flag] = pretrain(str(root), out=str(tmp_path / f"run{flag}"), img_size=16,
                              model_kwargs=TINY_C3, epochs=2, batch_size=5, quiet=True)
    from safetensors.torch import load_file

    a, b = (load_file(runs[f] / "model.safetensors") for f in ("0", "1"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    import json

    cards = [json.loads((runs[f] / "model.json").read_text())["training"] for f in ("0", "1")]
    assert cards[0]["skipped_files"] == cards[1]["skipped_files"] == ["class_2/bad.jpg"]


def test_open_dataset_uses_the_cache_unless_turned_off(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "imgs", classes=2, per_class=3, size=16)
    assert isinstance(open_dataset(str(root), img_size=16), PackedImages)
    assert type(open_dataset(str(root), img_size=16, cache=False)) is ImageFolder
    monkeypatch.setenv("HEBBRET_CACHE", "0")
    assert type(open_dataset(str(root), img_size=16)) is ImageFolder
    assert list((cache_root() / "packed").iterdir())  # it lives under the cache root


def test_fashion_mnist_at_native_size_is_batched_by_indexing():
    ds = open_dataset("fashion-mnist-mini", "test", mean=[0.3], std=[0.35])
    assert ds.batchable
    loader = make_loader(ds, 64, seed=1)
    first = next(iter(loader))
    ref = torch.stack([ds[int(i)][0] for i in first.indices])
    torch.testing.assert_close(first.images, ref, rtol=0, atol=0)
    assert first.labels.tolist() == [ds.items[int(i)].label for i in first.indices]
    assert not open_dataset("fashion-mnist-mini", "test", img_size=32).batchable
    np.testing.assert_array_equal(ds.uint8_rows(np.array([3]))[0], ds.raw(3))


def test_cache_cli_packs_a_folder_that_pretrain_then_reuses(tmp_path, capsys):
    from hebbret import cli

    root = folder_with_a_bad_file(tmp_path)
    cli.main(["cache", str(root), "--img-size", "16"])
    out = capsys.readouterr().out
    assert "16 images at 16×16×3, 1 undecodable" in out
    packed_dir = cache_root() / "packed"
    built = {p: (p / "meta.json").stat().st_mtime_ns for p in packed_dir.iterdir()}
    pretrain(str(root), out=str(tmp_path / "run"), img_size=16, model_kwargs=TINY_C3, epochs=1,
             quiet=True)
    assert {p: (p / "meta.json").stat().st_mtime_ns for p in packed_dir.iterdir()} == built


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_resident_and_streamed_batches_equal_the_cpu_ones(tmp_path):
    from hebbret.finetuning import augment_batch

    root = folder_with_a_bad_file(tmp_path)
    packed = open_packed(ImageFolder(root, 3, 16, mean=[0.4] * 3, std=[0.3] * 3))
    ref = batches(PackedLoader(packed, 4, EpochSampler(range(16), 1), "cpu"))
    for resident in (True, False):
        got = PackedLoader(packed, 4, EpochSampler(range(16), 1), "cuda", resident=resident)
        for b, r in zip(got, ref, strict=True):
            assert b.images.is_cuda
            torch.testing.assert_close(b.images.cpu(), r[0], rtol=0, atol=0)
            assert (b.labels.tolist(), b.indices.tolist(), b.skipped) == tuple(r[1:])
    x = ref[0][0]
    a = augment_batch(x.cuda(), torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.cpu(), augment_batch(x, torch.Generator().manual_seed(0)))


def test_each_dataset_batches_its_own_pixels_even_when_one_is_freed_before_the_next():
    # a resident copy keyed by id() once served a freed dataset's pixels to a new one that
    # happened to get the same id: the train images were embedded as the test images
    for split in ("train", "test", "train", "test"):
        ds = open_dataset("fashion-mnist-mini", split)
        first = next(iter(make_loader(ds, 8)))
        np.testing.assert_array_equal(first.images[:, 0].mul(255).round().byte().numpy(),
                                      ds.uint8_rows(np.arange(8))[..., 0])
        del ds, first
