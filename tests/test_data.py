import gzip
import logging

import numpy as np
import pytest
from PIL import Image

from hebbret.data import (
    FashionMNIST,
    ImageFolder,
    SkippedFiles,
    collate,
    load_image,
    make_loader,
    open_dataset,
    scan_image_folder,
)


def test_labeled_folder_is_scanned_in_natural_order(tmp_path):
    for cls in ("dog", "cat"):
        (tmp_path / cls).mkdir()
        for i in (10, 2, 1):
            Image.new("RGB", (4, 4)).save(tmp_path / cls / f"img{i}.png")
    items, classes = scan_image_folder(tmp_path)
    assert classes == ["cat", "dog"]
    assert [it.path for it in items[:3]] == ["cat/img1.png", "cat/img2.png", "cat/img10.png"]
    assert [it.label for it in items] == [0, 0, 0, 1, 1, 1]
    assert items[3].class_name == "dog"


def test_any_nesting_without_class_folders_is_unlabeled_and_extensions_any_case(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "top.JPG", format="JPEG")
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "x.Tiff", format="TIFF")
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "b" / "y.webp", format="WEBP")
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "b" / "z.BMP", format="BMP")
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "b" / "w.jpeg", format="JPEG")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"")
    items, classes = scan_image_folder(tmp_path)
    assert classes == []
    assert {it.label for it in items} == {-1}
    assert [it.path for it in items] == ["a/b/w.jpeg", "a/b/y.webp", "a/b/z.BMP", "a/x.Tiff",
                                         "top.JPG"]
    ds = ImageFolder(tmp_path, in_chans=3, img_size=8)
    assert all(ds[i][0].shape == (3, 8, 8) for i in range(len(ds)))


def test_empty_and_missing_folders_are_named(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"found 0 images under .*empty; supported extensions: "
                                         r"\.bmp, \.jpeg, \.jpg, \.png, \.tif, \.tiff, \.webp"):
        scan_image_folder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        scan_image_folder(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="neither an existing folder nor a named dataset"):
        open_dataset(tmp_path / "nowhere", img_size=8)


def test_channel_conversion_and_exif_orientation(tmp_path):
    gray = np.arange(24, dtype=np.uint8).reshape(4, 6) * 10
    Image.fromarray(gray).save(tmp_path / "g.png")
    rgb = load_image(tmp_path / "g.png", 3, None)
    assert rgb.shape == (4, 6, 3) and (rgb[..., 0] == gray).all()
    Image.fromarray(np.full((4, 6, 3), 90, np.uint8)).save(tmp_path / "c.png")
    assert load_image(tmp_path / "c.png", 1, None).shape == (4, 6, 1)
    # a 6-wide, 4-high JPEG tagged "rotate 90° clockwise" (orientation 6) is 4 wide, 6 high
    img = Image.fromarray(np.zeros((4, 6, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "r.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "r.jpg", 3, None).shape == (6, 4, 3)
    assert load_image(tmp_path / "r.jpg", 3, (8, 8)).shape == (8, 8, 3)


def write_bad_files(folder):
    """One of each kind of bad file that carries an image extension."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero.png").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not a jpeg")
    (folder / "noise.webp").write_bytes(np.random.default_rng(0).bytes(300))
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
                    ).save(folder / "full.png")
    data = (folder / "full.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "full.png").unlink()
    return 4


def test_bad_files_are_skipped_with_one_warning_each_and_counted(image_folder, caplog):
    n_bad = write_bad_files(image_folder / "class_0")
    ds = ImageFolder(image_folder, img_size=16)
    skipped = SkippedFiles(ds)
    seen = 0
    with caplog.at_level(logging.WARNING, logger="hebbret.data"):
        for epoch in range(2):
            for batch in make_loader(ds, batch_size=5, seed=0, epoch=epoch):
                skipped.add(batch.skipped)
                seen += len(batch.images)
    assert skipped.count == n_bad
    assert seen == 2 * (len(ds) - n_bad)
    warnings = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(warnings) == n_bad  # once per file, not once per epoch
    assert sorted(p.rsplit("/", 1)[1] for p in skipped.paths) == [
        "noise.webp", "text.jpg", "truncated.png", "zero.png"]


def test_collate_of_only_bad_files_is_an_empty_batch():
    batch = collate([(None, 0, 3), (None, 1, 4)])
    assert batch.images.numel() == 0 and batch.skipped == [3, 4]


def test_seeded_loader_order_is_deterministic_and_resumable(image_folder):
    ds = ImageFolder(image_folder, img_size=16)
    order = [int(i) for b in make_loader(ds, 5, seed=3, epoch=1) for i in b.indices]
    again = [int(i) for b in make_loader(ds, 5, seed=3, epoch=1) for i in b.indices]
    rest = [int(i) for b in make_loader(ds, 5, seed=3, epoch=1, skip_batches=2) for i in b.indices]
    other = [int(i) for b in make_loader(ds, 5, seed=3, epoch=2) for i in b.indices]
    assert order == again and sorted(order) == list(range(len(ds)))
    assert rest == order[10:]
    assert other != order


def _write_idx(path, arr):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_idx_files_from_a_data_root(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (5, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0, 9, 1, 1, 3]))
    ds = open_dataset("fashion-mnist", split="test", data_root=str(tmp_path))
    assert isinstance(ds, FashionMNIST) and len(ds) == 5
    x, label, idx = ds[1]
    assert x.shape == (1, 28, 28) and label == 9 and idx == 1
    assert np.allclose(x[0].numpy() * 255, images[1], atol=1e-3)
    assert ds.items[1].class_name == "Ankle boot"
    rgb = open_dataset("fashion-mnist", split="test", data_root=str(tmp_path), in_chans=3,
                       img_size=32)
    assert rgb[0][0].shape == (3, 32, 32)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        open_dataset("fashion-mnist", split="train", data_root=str(tmp_path))


def test_link_subset_takes_the_first_images_of_every_class(tmp_path):
    from _common.folders import link_subset

    from .conftest import write_image_folder

    for split in ("train", "test"):
        write_image_folder(tmp_path / "src" / split, classes=3, per_class=12, size=8)
    counts = link_subset(tmp_path / "src", tmp_path / "dst", {"train": 10, "test": 2})
    assert counts == {"train": 30, "test": 6}
    items, classes = scan_image_folder(tmp_path / "dst" / "train")
    assert classes == ["class_0", "class_1", "class_2"]
    assert [it.path for it in items[:10]] == [f"class_0/img_{i}.png" for i in range(10)]
    assert all((tmp_path / "dst" / "train" / it.path).is_symlink() for it in items)


def test_held_out_takes_a_share_of_every_class_but_never_a_whole_one():
    from hebbret.data import held_out

    labels = np.repeat([0, 1, 2, 3], [1, 2, 8, 20])
    mask = held_out(labels, 0.2, seed=3)
    assert [int(mask[labels == c].sum()) for c in range(4)] == [0, 1, 2, 4]  # round(1.6) = 2
    assert (held_out(labels, 0.2, seed=3) == mask).all()
    assert not (held_out(labels, 0.2, seed=4) == mask).all()
