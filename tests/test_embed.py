"""Embeddings dirs, export, search by image, and the whole chain through the CLI."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from hebbret import cli
from hebbret.data import ImageFolder
from hebbret.embed import (
    Extractor,
    embed_batch,
    extract_embeddings,
    global_pool,
    load_embeddings,
)
from hebbret.eval import retrieval_metrics, softhebb_readout
from hebbret.export import export_extractor, load_extractor
from hebbret.index import build_index
from hebbret.pretraining import pretrain
from hebbret.runs import EmbeddingSpec, load_run
from hebbret.search import search_by_image

from .conftest import TINY_C3, write_image_folder
from .test_data import write_bad_files


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One tiny run for the module, trained on the same seeded images as ``image_folder``."""
    root = tmp_path_factory.mktemp("embed-run")
    with pytest.MonkeyPatch.context() as m:
        m.setenv("HEBBRET_CACHE_DIR", str(root / "cache"))
        return pretrain(str(write_image_folder(root / "images")), out=str(root / "run"),
                        model_kwargs=TINY_C3, img_size=16, batch_size=4, epochs=1, quiet=True)


def test_embeddings_rows_match_items_and_the_model(run_dir, image_folder, tmp_path):
    n_bad = write_bad_files(image_folder / "class_2")
    out = extract_embeddings(run_dir, image_folder, tmp_path / "emb", batch_size=5, quiet=True)
    emb, items, meta = load_embeddings(out)
    # 24 training images: the descriptor PCA keeps the 23 directions they span (of 32·2·2)
    assert emb.shape == (24, 23) and len(items) == 24 and meta["dims"] == 23
    assert meta["skipped_files"] == n_bad and meta["layer"] == "features"
    assert meta["model_sha256"] == json.loads((run_dir / "model.json").read_text())["weights_sha256"]
    model, card = load_run(run_dir)
    ds = ImageFolder(image_folder, 3, 16, mean=card.input.mean, std=card.input.std)
    row = 7
    where = next(i for i, it in enumerate(ds.items) if it.path == items[row]["path"])
    expected = embed_batch(model, ds[where][0][None])[0].numpy()
    np.testing.assert_allclose(emb[row], expected, rtol=1e-5, atol=1e-5)
    assert items[row]["label"] == ds.items[where].label


def test_layers_pools_and_float16(run_dir, image_folder, tmp_path):
    out = extract_embeddings(run_dir, image_folder, tmp_path / "b0", layer="block0", pool="max",
                             grid=1, dtype="float16", quiet=True)
    emb, _, meta = load_embeddings(out)
    assert emb.dtype == np.float16 and emb.shape == (24, 8) and meta["pool"] == "max"
    out = extract_embeddings(run_dir, image_folder, tmp_path / "b0g", layer="block0", pool="avg",
                             grid=2, quiet=True)
    assert load_embeddings(out)[0].shape == (24, 8 * 4)  # a 2×2 grid of block 0's 8 channels
    with pytest.raises(ValueError, match="unknown layer 'block9'"):
        extract_embeddings(run_dir, image_folder, tmp_path / "x", layer="block9", quiet=True)


def test_global_pools_against_their_definitions():
    h = torch.rand(2, 5, 3, 4) + 0.01
    torch.testing.assert_close(global_pool(h, "avg"), h.mean(dim=(2, 3)))
    torch.testing.assert_close(global_pool(h, "max"), h.amax(dim=(2, 3)))
    assert global_pool(h, "flatten").shape == (2, 60)
    for p in (1.0, 3.0):  # GeM: (mean x^p)^(1/p) per channel, by hand for one cell
        expected = (h[1, 2] ** p).mean() ** (1 / p)
        torch.testing.assert_close(global_pool(h, "gem", p)[1, 2], expected)
    torch.testing.assert_close(global_pool(h, "gem", 1.0), global_pool(h, "avg"))
    assert (global_pool(h, "gem", 3.0) <= global_pool(h, "max") + 1e-6).all()
    assert (global_pool(h, "gem", 3.0) >= global_pool(h, "avg") - 1e-6).all()
    grid = global_pool(h[:, :, :2, :4], "gem", 2.0, grid=2)  # 2×2 cells of 1×2 positions
    cell = ((h[0, 3, 1, 2:4] ** 2).mean()) ** 0.5  # channel 3, bottom-right cell
    assert grid.shape == (2, 5 * 4)
    torch.testing.assert_close(grid.view(2, 5, 2, 2)[0, 3, 1, 1], cell)


def test_a_descriptor_has_one_size_at_every_input_size_and_layers_concatenate(run_dir):
    model, _ = load_run(run_dir)
    gem = EmbeddingSpec("features", "gem")
    for size in (16, 24, 40):
        assert embed_batch(model, torch.randn(2, 3, size, size), gem).shape == (2, 32)
    both = EmbeddingSpec("block1+features", "gem", 2.0)
    x = torch.randn(3, 3, 16, 16)
    got = embed_batch(model, x, both)
    parts = [embed_batch(model, x, EmbeddingSpec(layer, "gem", 2.0))
             for layer in ("block1", "features")]
    expected = torch.cat([torch.nn.functional.normalize(p, dim=1) for p in parts], dim=1)
    torch.testing.assert_close(got, expected)  # each part L2-normalised, then concatenated
    with pytest.raises(ValueError, match="unknown layer 'block7'"):
        Extractor(model, EmbeddingSpec("block1+block7", "gem"))
    with pytest.raises(ValueError, match="GeM exponent must be at least 1"):
        Extractor(model, EmbeddingSpec("features", "gem", 0.5))


def test_a_flipped_descriptor_does_not_change_when_the_image_is_flipped(run_dir, tmp_path):
    model, _ = load_run(run_dir)
    x = torch.randn(3, 3, 16, 16)
    plain, h, hv = (embed_batch(model, x, EmbeddingSpec("features", "flatten", flip=f))
                    for f in ("none", "h", "hv"))
    assert (embed_batch(model, x.flip(-1), EmbeddingSpec("features", "flatten")) - plain
            ).abs().max() > 1e-3  # the plain descriptor does see the mirror image
    mirror = embed_batch(model, x.flip(-1), EmbeddingSpec("features", "flatten", flip="h"))
    torch.testing.assert_close(mirror, h)
    upside = embed_batch(model, x.flip(-2), EmbeddingSpec("features", "flatten", flip="hv"))
    torch.testing.assert_close(upside, hv)
    expected = (torch.nn.functional.normalize(plain, dim=1) + torch.nn.functional.normalize(
        embed_batch(model, x.flip(-1), EmbeddingSpec("features", "flatten")), dim=1))
    torch.testing.assert_close(h, expected)  # each view L2-normalised, then summed
    with pytest.raises(ValueError, match="flip must be one of"):
        Extractor(model, EmbeddingSpec("features", "flatten", flip="v"))
    copy = tmp_path / "run"  # the card's descriptor, not the code's default, is the run's
    shutil.copytree(run_dir, copy)
    card = json.loads((copy / "model.json").read_text())
    card["embedding"]["flip"] = "h"
    (copy / "model.json").write_text(json.dumps(card))
    spec = EmbeddingSpec(**card["embedding"])
    torch.testing.assert_close(embed_batch(load_run(copy)[0], x), embed_batch(model, x, spec))
    assert spec.dims and spec.flip == "h"


def test_the_descriptor_travels_from_card_to_embeddings_index_and_search(run_dir, image_folder,
                                                                         tmp_path):
    emb = extract_embeddings(run_dir, image_folder, tmp_path / "emb", layer="block1+features",
                             pool="gem", gem_p=4.0, grid=1, flip="h", quiet=True)
    x, _, meta = load_embeddings(emb)
    assert (meta["layer"], meta["pool"], meta["gem_p"], meta["grid"], meta["flip"]) == (
        "block1+features", "gem", 4.0, 1, "h")
    assert x.shape == (24, 16 + 32)
    index = build_index(emb, tmp_path / "idx")
    query = image_folder / "class_2" / "img_5.png"
    found = search_by_image(index, [query], k=1)  # the query embedded with the index's descriptor
    assert found[0]["results"][0]["path"] == "class_2/img_5.png"
    assert found[0]["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    restored = load_extractor(export_extractor(run_dir, "safetensors", tmp_path / "e.safetensors",
                                               layer="block1+features", pool="gem", gem_p=4.0,
                                               grid=1, flip="h"))
    assert restored.spec == EmbeddingSpec("block1+features", "gem", 4.0, 1, flip="h")
    mirror = image_folder / "mirror" / "img.png"  # a mirrored query finds its original
    mirror.parent.mkdir()
    with Image.open(query) as im:
        ImageOps.mirror(im).save(mirror)
    found = search_by_image(index, [mirror], k=1)
    assert found[0]["results"][0]["path"] == "class_2/img_5.png"
    assert found[0]["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_the_descriptor_pca_keeps_the_training_images_geometry(run_dir, image_folder, tmp_path):
    raw_dir = extract_embeddings(run_dir, image_folder, tmp_path / "raw", project=False,
                                 quiet=True)
    raw, _, raw_meta = load_embeddings(raw_dir)
    emb, _, meta = load_embeddings(extract_embeddings(run_dir, image_folder, tmp_path / "pca",
                                                      quiet=True))
    assert raw.shape == (24, 32 * 2 * 2) and raw_meta["dims"] == 0 and meta["dims"] == 23
    # the PCA was fitted on these 24 images: it spans their centred unit vectors, so inner
    # products between them are kept exactly, in 23 instead of 128 dimensions
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    centred = unit - unit.mean(0)
    np.testing.assert_allclose(emb @ emb.T, centred @ centred.T, atol=2e-4)
    # rotated within them: no output dimension holds most of the variance (the first principal
    # direction of these images holds far more than a 23rd of it)
    top = np.linalg.svd(centred, compute_uv=False)[0] ** 2 / (centred ** 2).sum()
    assert emb.var(0).max() / emb.var(0).sum() < 0.5 * top
    # a descriptor other than the one it was fitted on is not projected
    other = load_embeddings(extract_embeddings(run_dir, image_folder, tmp_path / "max",
                                               pool="max", quiet=True))[2]
    assert other["dims"] == 0 and other["dim"] == 32
    # and without a PCA (descriptor_dims 0, or run dirs from before it) the descriptor is raw
    plain = pretrain(str(image_folder), out=str(tmp_path / "plain"), model_kwargs=TINY_C3,
                     img_size=16, batch_size=4, epochs=1, descriptor_dims=0, quiet=True)
    model, card = load_run(plain)
    assert card.embedding.dims == 0 and model.descriptor_pca.dims == 0
    assert not any(k.startswith("descriptor_pca") for k in model.state_dict())
    with pytest.raises(ValueError, match="do not belong together"):
        Extractor(model, EmbeddingSpec(dims=23))


def test_pt2_and_safetensors_exports_give_the_same_embeddings(run_dir):
    model, _ = load_run(run_dir)
    x = torch.randn(3, 3, 16, 16)
    reference = embed_batch(model, x)
    program = torch.export.load(str(export_extractor(run_dir, "pt2"))).module()
    assert (program(x) - reference).abs().max() < 1e-5
    single = embed_batch(model, x[:1])  # dynamic batch dimension: batch 1 works too
    assert (program(x[:1]) - single).abs().max() < 1e-5
    restored = load_extractor(export_extractor(run_dir, "safetensors"))
    with torch.no_grad():
        assert (restored(x) - reference).abs().max() < 1e-5


def test_onnx_export_when_onnx_is_installed(run_dir):
    pytest.importorskip("onnx")
    assert export_extractor(run_dir, "onnx").stat().st_size > 0


def test_search_by_image_refuses_a_different_model(run_dir, image_folder, tmp_path):
    emb = extract_embeddings(run_dir, image_folder, tmp_path / "emb", quiet=True)
    index = build_index(emb, tmp_path / "idx")
    query = image_folder / "class_1" / "img_3.png"
    found = search_by_image(index, [query], k=3)
    assert found[0]["results"][0]["path"] == "class_1/img_3.png"  # an image finds itself first
    other = pretrain(str(image_folder), out=str(tmp_path / "other"), model_kwargs=TINY_C3,
                     img_size=16, batch_size=4, seed=5, epochs=1, quiet=True)
    with pytest.raises(ValueError, match="was built from model sha256 .* but .*other holds"):
        search_by_image(index, [query], run=other)


def test_end_to_end_cli_chain(image_folder, tmp_path, capsys):
    run, emb, idx = tmp_path / "run", tmp_path / "emb", tmp_path / "idx"
    cfg = tmp_path / "p.toml"
    cfg.write_text("model_kwargs = { widths = [8, 16, 32] }\n")
    steps = [
        ["pretrain", str(image_folder), "--out", str(run), "--img-size", "16", "--batch-size",
         "4", "--config", str(cfg), "--quiet"],
        ["embed", str(run), str(image_folder), "--out", str(emb), "--quiet"],
        ["index", "build", str(emb), "--out", str(idx)],
        ["index", "info", str(idx)],
    ]
    for argv in steps:
        assert cli.main(argv) == 0, argv
    capsys.readouterr()
    assert cli.main(["search", str(idx), "--image", str(image_folder / "class_0" / "img_1.png"),
                     "--k", "5", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found[0]["results"][0]["path"] == "class_0/img_1.png"
    assert [r["rank"] for r in found[0]["results"]] == [1, 2, 3, 4, 5]
    assert cli.main(["eval", "knn", str(emb), str(emb), "--k", "3", "--out",
                     str(tmp_path / "knn.json")]) == 0
    knn = json.loads((tmp_path / "knn.json").read_text())
    assert knn["self_match_excluded"] and knn["k"]["3"]["top1"] > 100 / 3  # better than chance
    assert cli.main(["eval", "retrieval", "--database", str(emb), "--queries", str(emb),
                     "--k", "1", "5", "--out", str(tmp_path / "ret.json")]) == 0
    ret = json.loads((tmp_path / "ret.json").read_text())
    x, items, _ = load_embeddings(emb)
    y = np.array([it["label"] for it in items])
    direct = retrieval_metrics(x, y, x, y, ks=[1, 5], query_db_rows=np.arange(len(y)))
    assert ret["self_match_excluded"] and ret["mAP"] == pytest.approx(direct["mAP"])
    assert cli.main(["eval", "linear", str(emb), str(emb), "--protocol", "softhebb", "--epochs",
                     "3", "--out", str(tmp_path / "sh.json")]) == 0
    readout = json.loads((tmp_path / "sh.json").read_text())
    assert readout["evaluation"] == "softhebb" and readout["epochs"] == 3
    assert readout["top1"] == softhebb_readout(x, y, x, y, epochs=3)["top1"]
    assert cli.main(["search", str(idx), "--embeddings", str(emb / "embeddings.npy"), "--k",
                     "0"]) == 2


def test_a_descriptor_no_wider_than_its_pca_is_left_after_one_batch(tmp_path, monkeypatch):
    from hebbret import embed
    from hebbret.data import open_dataset
    from hebbret.models import create_model

    model = create_model("hebb_softhebb_c3", img_size=8, **TINY_C3)
    cfg = model.default_cfg
    folder = write_image_folder(tmp_path / "imgs", classes=2, per_class=20, size=8)
    ds = open_dataset(str(folder), "train", 3, 8, mean=cfg["mean"], std=cfg["std"])
    spec = EmbeddingSpec(**cfg["embedding"])
    assert Extractor(model.eval(), spec)(torch.zeros(2, 3, 8, 8)).shape == (2, 32)
    monkeypatch.setattr(embed, "PCA_BATCH_SIZE", 5)
    assert embed.fit_descriptor_pca(model, ds, 8, quiet=True)[0] == {"dims": 8, "images": 40,
                                                                  "flip": "h"}
    # a 32-value descriptor and 40 images: a PCA to 1024 (at most 39) would keep all 32 values,
    # so only the first batch is read, to learn the width
    assert embed.fit_descriptor_pca(model, ds, 1024, quiet=True, flip="auto")[0] == {
        "dims": 0, "images": 5, "flip": "h"}  # and no choice of views on one batch
    assert model.descriptor_pca.dims == 0


def _left_or_right(root, per_class: int = 30, size: int = 16):
    """Two classes that are each other's mirror image: a bright square in the left half, or in
    the right half, at a random height and depth."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(("left", "right")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.normal(40, 10, (size, size, 3))
            y, x = rng.integers(0, size - 5), rng.integers(0, size // 2 - 5)
            img[y:y + 5, x:x + 5] = 220
            img = img[:, ::-1] if c else img
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def test_auto_views_drop_the_mirror_where_it_erases_the_classes(tmp_path):
    from hebbret.data import open_dataset
    from hebbret.embed import fit_descriptor_pca
    from hebbret.models import create_model

    folder = _left_or_right(tmp_path / "imgs")
    model = create_model("hebb_softhebb_c3", img_size=16, **TINY_C3)
    cfg = model.default_cfg
    assert cfg["embedding"]["flip"] == "h"
    ds = open_dataset(str(folder), "train", 3, 16, mean=cfg["mean"], std=cfg["std"])
    info, sample = fit_descriptor_pca(model, ds, 8, quiet=True, flip="auto")
    # summed with its mirror image, a left square looks like a right one: the kNN on held-out
    # rows says so, and the image alone is kept, with the PCA fitted on it
    assert info["flip"] == "none" == cfg["embedding"]["flip"]
    assert info["flip_knn"]["none"] >= 90 > info["flip_knn"]["h"]
    assert (info["dims"], info["images"]) == (8, 60)
    x = torch.stack([ds[i][0] for i in (0, 30)])
    assert Extractor(model.eval())(x).shape == (2, 8)
    # a given view set is taken as it is, without a choice
    info, _ = fit_descriptor_pca(model, ds, 8, quiet=True, flip="hv")
    assert info == {"dims": 8, "images": 60, "flip": "hv"} and cfg["embedding"]["flip"] == "hv"
    with pytest.raises(ValueError, match="flip must be one of"):
        fit_descriptor_pca(model, ds, 8, quiet=True, flip="sideways")
    # no PCA: no sample, the given views all the same
    assert fit_descriptor_pca(model, ds, 0, flip="none") == ({"dims": 0, "images": 0,
                                                                "flip": "none"}, None)
    assert cfg["embedding"]["flip"] == "none" and model.descriptor_pca.dims == 0


def test_the_views_stay_the_backbones_own_on_a_tie_or_without_classes():
    from hebbret.embed import choose_views

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 20)
    x = rng.normal(size=(40, 6)).astype(np.float32) + labels[:, None]
    assert choose_views(x, 2 * x, labels, "h")[0] == "h"  # same neighbours: a tie
    assert choose_views(x, x, np.zeros(40, np.int64), "h") == ("h", {})
    assert choose_views(x[:2], x[:2], labels[[0, 20]], "h") == ("h", {})  # nothing held out
    views, knn = choose_views(rng.normal(size=(40, 6)).astype(np.float32), x, labels, "hv")
    assert views == "none" and knn["none"] > knn["hv"]


def test_pretrain_writes_the_training_embeddings_that_embed_would(image_folder, tmp_path):
    n_bad = write_bad_files(image_folder / "class_1")
    run = pretrain(str(image_folder), out=str(tmp_path / "run"), model_kwargs=TINY_C3,
                   img_size=16, batch_size=4, epochs=1, descriptor_dims=8, flip="auto",
                   embeddings_out=str(tmp_path / "from_sample"), quiet=True)
    again = extract_embeddings(run, image_folder, tmp_path / "embedded", batch_size=5)
    mine, items, meta = load_embeddings(tmp_path / "from_sample")
    theirs, items_again, meta_again = load_embeddings(again)
    assert meta == meta_again and meta["skipped_files"] == n_bad and meta["dims"] == 8
    assert items == items_again and len(items) == 24
    np.testing.assert_allclose(mine, theirs, atol=1e-5)
    # a sample that does not hold every image writes nothing
    from hebbret import embed
    from hebbret.data import open_dataset

    model, card = load_run(run)
    ds = open_dataset(str(image_folder), "train", 3, 16, mean=card.input.mean, std=card.input.std)
    _, sample = embed.fit_descriptor_pca(model, ds, 8, quiet=True)
    sample.rows = sample.rows[1:]
    with pytest.raises(ValueError, match="not the embedding of every image"):
        embed.write_sample_embeddings(run, model, sample, ds, str(image_folder), "train",
                                      tmp_path / "partial")
