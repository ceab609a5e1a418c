"""Mistakes a user makes get one clear error (through the CLI: exit 2, no traceback) or a
counted skip, and nothing half-written."""

import logging
import os

import numpy as np
import pytest

from hebbret import cli
from hebbret.data import scan_image_folder
from hebbret.index import build_index

from .conftest import write_image_folder
from .test_data import write_bad_files
from .test_index import write_embeddings


def error_of(argv, caplog):
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert cli.main(argv) == 2
    return caplog.text


def test_a_folder_of_only_undecodable_files_is_refused_and_writes_no_run(tmp_path, caplog):
    bad = tmp_path / "bad"
    write_bad_files(bad / "class_0")
    text = error_of(["pretrain", str(bad), "--img-size", "16", "--out", str(tmp_path / "run")],
                    caplog)
    assert "none of the 4 image files" in text and str(bad) in text
    assert not (tmp_path / "run").exists()


def test_without_the_cache_it_still_refuses_and_writes_no_model(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("HEBBRET_CACHE", "0")
    bad = tmp_path / "bad"
    write_bad_files(bad / "class_0")
    run = tmp_path / "run"
    text = error_of(["pretrain", str(bad), "--img-size", "16", "--out", str(run), "--steps", "2"],
                    caplog)
    assert "none of the 4 image files" in text
    assert not (run / "model.safetensors").exists() and not (run / "model.json").exists()


def test_a_corrupt_faiss_file_is_named(tmp_path, caplog):
    rng = np.random.default_rng(0)
    write_embeddings(tmp_path / "emb", rng.normal(size=(20, 8)).astype(np.float32))
    index = build_index(tmp_path / "emb", tmp_path / "index")
    data = (index / "index.faiss").read_bytes()
    (index / "index.faiss").write_bytes(data[: len(data) // 3])
    np.save(tmp_path / "q.npy", rng.normal(size=(2, 8)).astype(np.float32))
    text = error_of(["search", str(index), "--embeddings", str(tmp_path / "q.npy")], caplog)
    assert "index.faiss is not a readable FAISS index" in text and "rebuild" in text


def test_symlink_loops_and_links_into_the_folder_are_scanned_once(tmp_path, caplog):
    root = write_image_folder(tmp_path / "imgs", classes=2, per_class=3, size=8)
    os.symlink(root, root / "class_0" / "back_to_root")  # a loop
    os.symlink(root / "class_1", root / "class_0" / "sibling")  # a second way to class_1
    outside = write_image_folder(tmp_path / "more", classes=1, per_class=2, size=8)
    os.symlink(outside, root / "class_1" / "more")  # followed: it leads out of the folder ...
    os.symlink(root / "class_1" / "more", outside / "class_0" / "loop")  # ... and loops back
    with caplog.at_level(logging.WARNING, logger="hebbret.data"):
        items, classes = scan_image_folder(root)
    assert classes == ["class_0", "class_1"]
    assert len(items) == 8 and len({it.path for it in items}) == 8
    assert "inside" in caplog.text and "already scanned" in caplog.text


def test_a_linear_probe_on_one_class_is_refused(tmp_path, caplog):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 4)).astype(np.float32)
    write_embeddings(tmp_path / "train", x, labels=[0] * 12)
    write_embeddings(tmp_path / "test", x[:4], labels=[0] * 4)
    text = error_of(["eval", "linear", str(tmp_path / "train"), str(tmp_path / "test")], caplog)
    assert "at least 2 classes" in text


@pytest.mark.parametrize("lr", ["0", "-0.1", "nan", "inf"])
def test_pretrain_refuses_a_learning_rate_that_is_not_positive_and_finite(tmp_path, caplog, lr):
    root = write_image_folder(tmp_path / "imgs", classes=2, per_class=2, size=8)
    text = error_of(["pretrain", str(root), "--lr", "0.1", lr, "0.1", "--out",
                     str(tmp_path / "run")], caplog)
    assert "learning rates must be positive and finite" in text
    assert not (tmp_path / "run").exists()


def test_a_truncated_embeddings_array_is_named(tmp_path, caplog):
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    emb = write_embeddings(tmp_path / "emb", x, labels=[0, 1] * 5)
    data = (emb / "embeddings.npy").read_bytes()
    (emb / "embeddings.npy").write_bytes(data[:-20])
    text = error_of(["eval", "knn", str(emb), str(emb)], caplog)
    assert "embeddings.npy is not a readable .npy array" in text


def test_an_unwritable_output_location_is_an_error_not_a_traceback(tmp_path, caplog):
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    emb = write_embeddings(tmp_path / "emb", x)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    text = error_of(["index", "build", str(emb), "--out", str(blocker / "idx")], caplog)
    assert "a_file" in text


def test_pretrain_takes_backbone_arguments_as_json(tmp_path, caplog):
    import json

    root = write_image_folder(tmp_path / "imgs", classes=2, per_class=4, size=16)
    run = tmp_path / "run"
    assert cli.main(["pretrain", str(root), "--model-kwargs",
                     '{"init_radius": 5, "widths": [8, 16, 32]}', "--steps", "2", "--quiet",
                     "--out", str(run)]) == 0
    args = json.loads((run / "model.json").read_text())["model_args"]
    assert args["init_radius"] == 5 and args["widths"] == [8, 16, 32]
    with pytest.raises(SystemExit):
        cli.main(["pretrain", str(root), "--model-kwargs", "[5]", "--out", str(run)])


def test_paths_with_spaces_and_non_ascii_names_work_end_to_end(tmp_path, capsys):
    root = write_image_folder(tmp_path / "mes données" / "été 2024", classes=2, per_class=4,
                              size=16)
    (root / "class_0" / "café au lait.png").write_bytes((root / "class_0" / "img_0.png")
                                                        .read_bytes())
    run, emb, index = (tmp_path / "sortie ü" / name for name in ("run", "emb", "index"))
    assert cli.main(["pretrain", str(root), "--model-kwargs", '{"widths": [8, 16, 32]}',
                     "--steps", "2", "--quiet", "--out", str(run)]) == 0
    assert cli.main(["embed", str(run), str(root), "--out", str(emb), "--quiet"]) == 0
    assert cli.main(["index", "build", str(emb), "--out", str(index)]) == 0
    capsys.readouterr()
    assert cli.main(["search", str(index), "--image", str(root / "class_0" / "café au lait.png"),
                     "--k", "2"]) == 0
    assert "café au lait.png" in capsys.readouterr().out
