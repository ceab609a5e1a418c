"""`hebbret index update`: an updated index equals a rebuild, and its faults (issue 24.1, 24.7)."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import faiss
import numpy as np
import pytest
from PIL import Image

from hebbret.artifacts import is_complete
from hebbret.cli import main
from hebbret.embed import extract_embeddings, load_embeddings
from hebbret.index import build_index, current_dir, load_index, search_index
from hebbret.pretraining import pretrain
from hebbret.update import IndexBusy, update_index, update_lock

from .conftest import TINY_C3, pattern_image, write_image_folder

FACTORIES = [("Flat", False), ("IVF2,Flat", False), ("PCA4,L2norm,IVF2,Flat", False),
             ("IVF2,Flat", True), ("HNSW8", False)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("update-run")
    images = write_image_folder(root / "images", classes=3, per_class=8, size=16)
    with pytest.MonkeyPatch.context() as m:
        m.setenv("HEBBRET_CACHE_DIR", str(root / "cache"))
        return pretrain(str(images), out=str(root / "run"), model_kwargs=TINY_C3, img_size=16,
                        batch_size=4, epochs=1, descriptor_dims=8, quiet=True)


def make_index(tmp_path: Path, run: Path, factory: str = "Flat", on_disk: bool = False,
               per_class: int = 20) -> tuple[Path, Path]:
    """(image folder, index dir built from it)."""
    images = write_image_folder(tmp_path / "images", classes=3, per_class=per_class, size=16,
                                seed=1)
    emb = extract_embeddings(run, images, tmp_path / "emb", quiet=True)
    return images, build_index(emb, tmp_path / "index", factory=factory, on_disk=on_disk,
                               shard_rows=16)


def change_folder(images: Path, seed: int = 5) -> None:
    """Remove two files, rewrite one with another picture, add three."""
    rng = np.random.default_rng(seed)
    (images / "class_0" / "img_1.png").unlink()
    (images / "class_2" / "img_7.png").unlink()
    Image.fromarray(pattern_image(2, rng)).save(images / "class_1" / "img_2.png")
    for i in range(3):
        Image.fromarray(pattern_image(1, rng)).save(images / "class_2" / f"new_{i}.png")


def vectors_by_path(index_dir: Path) -> dict[str, np.ndarray]:
    _, items, meta = load_index(index_dir)
    emb, _, _ = load_embeddings(meta["embeddings"])
    return {it["path"]: np.asarray(emb[r]) for r, it in enumerate(items)}


def rebuild(tmp_path: Path, run: Path, images: Path, factory: str, on_disk: bool) -> Path:
    emb = extract_embeddings(run, images, tmp_path / "emb-rebuilt", quiet=True)
    return build_index(emb, tmp_path / "rebuilt", factory=factory, on_disk=on_disk,
                       shard_rows=16)


def assert_rows_find_themselves(index_dir: Path) -> None:
    """Every row's own vector, searched exhaustively, finds that row first (or tied first):
    the ids of the index are its rows, in the order of items.jsonl."""
    index, items, meta = load_index(index_dir)
    emb, _, _ = load_embeddings(meta["embeddings"])
    exhaustive = {"nprobe": 64} if "IVF" in meta["factory"] else (
        {"ef_search": 128} if "HNSW" in meta["factory"] else {})
    scores, ids, _, _ = search_index(index_dir, np.asarray(emb), k=4, **exhaustive)
    assert index.ntotal == len(items) == len(emb)
    for row, (s, i) in enumerate(zip(scores, ids, strict=True)):  # itself, or a tie (a PCA
        assert row in i[np.abs(s - s[0]) < 1e-4], row  # may map two images to one point)


@pytest.mark.parametrize("factory,on_disk", FACTORIES)
def test_update_after_adding_removing_and_modifying_equals_a_rebuild(run_dir, tmp_path, factory,
                                                                     on_disk):
    images, index = make_index(tmp_path, run_dir, factory, on_disk)
    before = vectors_by_path(index)
    change_folder(images)
    s = update_index(index, device="cpu", quiet=True)
    assert (s["added"], s["removed"], s["skipped_files"], s["generation"]) == (4, 3, 0, 1)
    assert current_dir(index).name == "gen-000001"
    got = vectors_by_path(index)
    want = vectors_by_path(rebuild(tmp_path, run_dir, images, factory, on_disk))
    assert sorted(got) == sorted(want)  # the same rows: files, and their vectors
    for path, v in want.items():
        np.testing.assert_allclose(got[path], v, rtol=1e-5, atol=1e-5)
    assert not np.allclose(before["class_1/img_2.png"], got["class_1/img_2.png"])
    assert [it["label"] for it in load_index(index)[1]][-3:] == [2, 2, 2]
    assert_rows_find_themselves(index)
    meta = load_index(index)[2]
    assert meta["count"] == 61 and meta["generation"] == 1
    assert meta["rows_added_since_training"] == (0 if factory in ("Flat", "HNSW8") else 4)


def test_flat_update_gives_the_hits_of_a_rebuild(run_dir, tmp_path):
    images, index = make_index(tmp_path, run_dir)
    change_folder(images)
    update_index(index, device="cpu", quiet=True)
    rebuilt = rebuild(tmp_path, run_dir, images, "Flat", False)
    q = np.asarray(load_embeddings(tmp_path / "emb-rebuilt")[0])
    s1, i1, items1, _ = search_index(index, q, k=8)
    s2, i2, items2, _ = search_index(rebuilt, q, k=8)
    np.testing.assert_allclose(s1, s2, rtol=1e-5, atol=1e-5)
    assert [[items1[i]["path"] for i in row] for row in i1] == \
        [[items2[i]["path"] for i in row] for row in i2]


def test_only_changed_files_are_embedded_and_old_generations_go(run_dir, tmp_path, caplog):
    images, index = make_index(tmp_path, run_dir)
    assert update_index(index, device="cpu", quiet=True)["method"] == "none"
    assert not (index / "CURRENT").exists()  # nothing changed, nothing written
    change_folder(images)
    update_index(index, device="cpu", quiet=True)
    Image.fromarray(pattern_image(0, np.random.default_rng(9))).save(images / "class_0" / "x.png")
    with caplog.at_level("INFO", logger="hebbret.update"):
        s = update_index(index, device="cpu", quiet=True)
    assert (s["added"], s["removed"], s["generation"]) == (1, 0, 2)
    assert "embedding 1 new or changed files" in caplog.text
    # the previous generation stays for readers that opened it; the original build is gone
    assert sorted(p.name for p in index.glob("gen-*")) == ["gen-000001", "gen-000002"]
    assert not (index / "index.faiss").exists() and is_complete(index)
    update_index(index, device="cpu", quiet=True)
    assert sorted(p.name for p in index.glob("gen-*")) == ["gen-000002"]
    moved = index.rename(tmp_path / "moved")  # an updated index dir can move, as a built one
    assert len(load_index(moved)[1]) == 62 and is_complete(moved)
    assert_rows_find_themselves(moved)
    index = moved.rename(index)
    build_index(load_index(index)[2]["embeddings"], index)  # a rebuild replaces the generations
    assert not (index / "CURRENT").exists() and not list(index.glob("gen-*"))
    assert len(load_index(index)[1]) == 62


def test_a_corrupt_new_file_is_skipped_and_counted(run_dir, tmp_path):
    images, index = make_index(tmp_path, run_dir)
    (images / "class_0" / "broken.png").write_bytes(b"\x89PNG not really")
    Image.fromarray(pattern_image(0, np.random.default_rng(3))).save(images / "class_0" / "ok.png")
    s = update_index(index, device="cpu", quiet=True)
    assert (s["added"], s["skipped_files"], s["skipped_paths"]) == (1, 1, ["class_0/broken.png"])
    paths = [it["path"] for it in load_index(index)[1]]
    assert "class_0/ok.png" in paths and "class_0/broken.png" not in paths
    assert_rows_find_themselves(index)
    assert update_index(index, device="cpu", quiet=True)["method"] == "none"  # not retried...
    Image.fromarray(pattern_image(0, np.random.default_rng(4))).save(images / "class_0" /
                                                                     "broken.png")
    s = update_index(index, device="cpu", quiet=True)  # ... until it changes
    assert (s["added"], s["removed"], s["skipped_files"]) == (1, 0, 0)


def test_files_the_first_embedding_skipped_are_not_retried_until_they_change(run_dir, tmp_path):
    (tmp_path / "images" / "class_1").mkdir(parents=True)
    (tmp_path / "images" / "class_1" / "bad.png").write_bytes(b"not a png")
    images, index = make_index(tmp_path, run_dir)
    assert load_embeddings(tmp_path / "emb")[2]["skipped_paths"] == ["class_1/bad.png"]
    assert update_index(index, device="cpu", quiet=True)["method"] == "none"


def test_wrong_paths_and_folders_that_are_not_the_index_are_named(run_dir, tmp_path, caplog):
    images, index = make_index(tmp_path, run_dir)
    with pytest.raises(FileNotFoundError, match="index dir not found"):
        update_index(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        update_index(index, tmp_path / "missing")
    other = write_image_folder(tmp_path / "other", classes=2, per_class=3, size=16)
    for d in other.iterdir():
        d.rename(other / f"x{d.name}")
    with pytest.raises(ValueError, match="does not match .* none of the index's 60 images"):
        update_index(index, other)
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(images / "class_0" / "img_0.png", loose / "img_0.png")
    with pytest.raises(ValueError, match="labeled by class sub-folders but the folder is not"):
        update_index(index, loose)
    assert main(["index", "update", str(index), str(other)]) == 2
    assert "none of the index's 60 images" in caplog.text
    assert not (index / "CURRENT").exists()


def test_a_held_lock_makes_an_update_fail_clearly_or_wait(run_dir, tmp_path):
    images, index = make_index(tmp_path, run_dir)
    change_folder(images)
    done: list[dict] = []
    with update_lock(index):
        with pytest.raises(IndexBusy, match="another update of .* is running"):
            update_index(index, device="cpu", wait=False)
        t = threading.Thread(target=lambda: done.append(update_index(index, device="cpu",
                                                                     quiet=True)))
        t.start()
        t.join(1.0)
        assert t.is_alive() and not done  # waits for the lock
    t.join(60)
    assert done and done[0]["generation"] == 1


def test_searches_while_updates_land_see_the_old_or_the_new_index(run_dir, tmp_path):
    images, index = make_index(tmp_path, run_dir)
    q = np.asarray(load_embeddings(tmp_path / "emb")[0][:5])

    def answer() -> list[list[str]]:
        _, ids, items, _ = search_index(index, q, k=60)
        return [sorted(items[i]["path"] for i in row) for row in ids]

    seen, errors, stop = [], [], threading.Event()

    def search_loop() -> None:
        while not stop.is_set():
            try:
                seen.append(answer())
            except Exception as e:  # noqa: BLE001 - any error fails the test
                errors.append(e)

    old = answer()
    t = threading.Thread(target=search_loop)
    t.start()
    answers = [old]
    for seed in range(3):
        Image.fromarray(pattern_image(seed, np.random.default_rng(seed))).save(
            images / f"class_{seed}" / f"late_{seed}.png")
        (images / f"class_{seed}" / f"img_{seed + 3}.png").unlink()
        update_index(index, device="cpu", quiet=True)
        answers.append(answer())
    stop.set()
    t.join()
    assert not errors and len(seen) > 3
    assert all(a in answers for a in seen)  # each search saw one whole generation


def test_serve_picks_up_a_new_generation_without_a_restart(run_dir, tmp_path):
    from fastapi.testclient import TestClient

    from hebbret.config import ServeConfig
    from hebbret.serve import create_app

    images, index = make_index(tmp_path, run_dir)
    client = TestClient(create_app(ServeConfig(index=str(index), device="cpu", reload_s=0.0)))
    assert client.get("/healthz").json()["count"] == 60
    change_folder(images)
    update_index(index, device="cpu", quiet=True)
    assert client.get("/healthz").json()["count"] == 61
    hit = client.post("/api/search", json={"row": 60, "k": 1}).json()["results"][0]
    assert hit["row"] == 60 and hit["path"] == "class_2/new_2.png"
    assert client.get("/api/info").json()["generation"] == 1


def test_an_index_that_cannot_remove_rows_is_refilled(run_dir, tmp_path):
    images, index = make_index(tmp_path, run_dir, "HNSW8")
    change_folder(images)
    assert update_index(index, device="cpu", quiet=True)["method"].startswith("refilled")
    assert isinstance(faiss.downcast_index(load_index(index)[0]), faiss.IndexHNSWFlat)
    assert os.path.isdir(index / "gen-000001" / "embeddings")


# ------------------------------------------------------------------- faults, in real processes
REPO = Path(__file__).resolve().parents[1]


def cli_update(index: Path, *args: str, limit_bytes: int | None = None) -> subprocess.Popen:
    """`hebbret -v index update INDEX` in its own process (stderr: its log, line by line);
    ``limit_bytes``: no file it writes may grow past this (RLIMIT_FSIZE: a full disk)."""

    def limit() -> None:
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.Popen([sys.executable, "-m", "hebbret", "-v", "index", "update", str(index),
                             "--device", "cpu", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=limit,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def paths_of(index: Path) -> set[str]:
    """The index's files (it must load and answer a search)."""
    _, items, meta = load_index(index)
    emb = np.asarray(load_embeddings(meta["embeddings"])[0][:2])
    assert search_index(index, emb, k=3)[1].shape == (2, 3)
    return {it["path"] for it in items}


def folder_paths(images: Path) -> set[str]:
    return {p.relative_to(images).as_posix() for p in images.rglob("*.png")}


def kill_at(p: subprocess.Popen, marker: str) -> str:
    """SIGKILL ``p`` as soon as its log shows ``marker``; returns the log up to there."""
    seen = []
    for line in p.stderr:
        seen.append(line)
        if marker in line:
            p.send_signal(signal.SIGKILL)
            break
    p.wait(60)
    p.stderr.close()
    p.stdout.close()
    return "".join(seen)


@pytest.mark.slow
@pytest.mark.parametrize("factory,on_disk,points", [
    ("Flat", False, ["embedding ", "wrote ", "publishing"]),
    ("IVF2,Flat", True, ["embedding ", "on-disk index:", "publishing"])])
def test_kill_9_during_an_update_leaves_a_whole_index_and_the_rerun_completes(
        run_dir, tmp_path, factory, on_disk, points):
    images, index = make_index(tmp_path, run_dir, factory, on_disk)
    change_folder(images)
    for j, point in enumerate(points):
        Image.fromarray(pattern_image(j, np.random.default_rng(j))).save(
            images / "class_0" / f"kill_{j}.png")
        old, new = paths_of(index), folder_paths(images)
        p = cli_update(index)
        log = kill_at(p, point)
        # killed there (the last point is a hair before the end: a slow kill may land after it)
        assert p.returncode == -signal.SIGKILL or point == "publishing" == points[-1], log
        assert paths_of(index) in (old, new), point  # the old index, or the new one whole
    s = update_index(index, device="cpu", quiet=True)  # the rerun finishes the job
    assert paths_of(index) == folder_paths(images)
    assert s["generation"] >= 1 and len(list(index.glob("gen-*"))) <= 2
    assert_rows_find_themselves(index)


@pytest.mark.slow
@pytest.mark.parametrize("factory,limit,log", [  # 121 rows of 8 float32: a 4 KB array
    ("Flat", 2_000, "File too large while writing"),  # the vectors do not fit
    ("Flat", 5_000, "rows (remove_ids + add)"),  # the index fits, its items do not
    ("HNSW8", 4_500, "index.faiss: Error")])  # the vectors fit, the graph does not
def test_a_full_disk_during_an_update_leaves_the_previous_version(run_dir, tmp_path, factory,
                                                                  limit, log):
    images, index = make_index(tmp_path, run_dir, factory, per_class=40)
    old = paths_of(index)
    change_folder(images)
    p = cli_update(index, limit_bytes=limit)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2, err
    assert "while writing" in err and "is unchanged" in err and log in err, err
    assert "Traceback" not in err
    assert paths_of(index) == old and not list(index.glob("gen-*"))
    update_index(index, device="cpu", quiet=True)
    assert paths_of(index) == folder_paths(images)


@pytest.mark.slow
def test_two_updates_at_once_take_turns_and_lose_no_rows(run_dir, tmp_path):
    images, index = make_index(tmp_path, run_dir)
    change_folder(images)
    with update_lock(index):  # both start while the index is busy
        procs = [cli_update(index) for _ in range(2)]
        for p in procs:
            for line in p.stderr:
                if "waiting for another update" in line:
                    break
        busy = cli_update(index, "--no-wait")
        _, err = busy.communicate(timeout=120)
        assert busy.returncode == 2 and "another update of" in err and "Traceback" not in err
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert [o.split(": ", 1)[1].split(",")[0] for o in outs] == ["generation 1"] * 2, outs
    assert sorted(o.split("(")[1].split(",")[0] for o in outs) == ["0 added", "4 added"]
    assert paths_of(index) == folder_paths(images)
    assert load_index(index)[2]["generation"] == 1  # the second found nothing left to do


@pytest.mark.slow
def test_bench_update_times_an_update_against_a_rebuild(run_dir, tmp_path):
    from .conftest import load_tool

    images = write_image_folder(tmp_path / "src", classes=3, per_class=30, size=16, seed=2)
    readme = tmp_path / "results.md"
    readme.write_text("x\n<!-- update-results:begin -->\n<!-- update-results:end -->\n")
    doc = load_tool("bench_update").main([
        str(run_dir), str(images), "--add", "6", "--factory", "Flat", "IVF2,Flat",
        "--nprobe", "2", "--queries", "20", "--work", str(tmp_path / "work"),
        "--results", str(tmp_path / "update.json"), "--readme", str(readme)])
    flat, ivf = doc["stages"]["update"]["Flat"], doc["stages"]["update"]["IVF2,Flat"]
    assert flat["added"] == ivf["added"] == 6 and flat["collection"] == 90
    assert flat["identical_top10"] == 1.0 and flat["recall10_updated"] == 1.0
    assert ivf["recall10_updated"] == ivf["recall10_rebuilt"] == 1.0  # every list visited
    assert flat["update_s"] > 0 and flat["speedup"] > 0
    assert "| Flat | 90 | 6 |" in readme.read_text()
