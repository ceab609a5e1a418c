"""`hebbret serve`: the JSON API with FastAPI's test client, and the page in a real headless
Chromium (Debian's, driven by Playwright; skipped where it is not installed)."""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hebbret.config import ServeConfig
from hebbret.embed import extract_embeddings, load_embeddings
from hebbret.eval import weighted_vote
from hebbret.index import build_index
from hebbret.pretraining import pretrain
from hebbret.search import search_by_image
from hebbret.serve import create_app

from .conftest import TINY_C3, load_tool, write_image_folder

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    images = write_image_folder(root / "images", classes=3, per_class=8, size=16)
    with pytest.MonkeyPatch.context() as m:  # the module's own cache, unset afterwards
        m.setenv("HEBBRET_CACHE_DIR", str(root / "cache"))
        run = pretrain(str(images), out=str(root / "run"), model_kwargs=TINY_C3, img_size=16,
                       batch_size=4, epochs=1, descriptor_dims=8, quiet=True)
        emb = extract_embeddings(run, images, root / "emb", quiet=True)
    return {"images": images, "run": run, "emb": emb,
            "index": build_index(emb, root / "index")}


@pytest.fixture(scope="module")
def client(collection):
    from fastapi.testclient import TestClient

    return TestClient(create_app(ServeConfig(index=str(collection["index"]), device="cpu",
                                             max_upload_mb=0.05)))


def png_bytes(path: Path) -> bytes:
    return path.read_bytes()


def test_image_search_equals_search_by_image_and_votes_like_eval_knn(client, collection):
    query = collection["images"] / "class_1" / "img_3.png"
    r = client.post("/api/search?k=5", files={"image": ("q.png", png_bytes(query), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = search_by_image(collection["index"], [query], k=5)[0]["results"]
    assert [h["row"] for h in body["results"]] == [h["row"] for h in expected]
    assert [h["path"] for h in body["results"]] == [h["path"] for h in expected]
    np.testing.assert_allclose([h["score"] for h in body["results"]],
                               [h["score"] for h in expected], rtol=1e-5)
    votes = weighted_vote(np.array([h["score"] for h in expected]),
                          np.array([h["label"] for h in expected]))
    assert body["prediction"]["label"] == next(iter(votes))
    assert body["prediction"]["class_name"] == f"class_{body['prediction']['label']}"
    # the raw bytes with an image content type give the same hits
    raw = client.post("/api/search?k=5", content=png_bytes(query),
                      headers={"content-type": "image/png"})
    assert [h["row"] for h in raw.json()["results"]] == [h["row"] for h in body["results"]]


def test_duplicates_are_the_groups_of_hebbret_dedup(client, collection):
    from hebbret.dedup import near_duplicates

    expected = near_duplicates(collection["index"], 0.5, quiet=True)["groups"]
    assert expected  # a low threshold joins rows of these few patterns
    r = client.get("/api/duplicates?threshold=0.5")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["groups"] == expected and body["groups_total"] == len(expected)
    assert body["threshold"] == 0.5 and body["rows"] == 24
    for bad in ("1.5", "0", "x"):
        r = client.get(f"/api/duplicates?threshold={bad}")
        assert r.status_code in (400, 422) and "threshold" in r.json()["error"]


def test_vector_and_row_search_info_random_thumbs_and_health(client, collection):
    emb, items, _ = load_embeddings(collection["emb"])
    r = client.post("/api/search", json={"vector": np.asarray(emb[4]).tolist(), "k": 3})
    assert r.status_code == 200 and r.json()["results"][0]["row"] == 4
    by_row = client.post("/api/search", json={"row": 4, "k": 3}).json()
    assert by_row["results"] == r.json()["results"] and by_row["query_item"] == items[4]
    info = client.get("/api/info").json()
    assert info["ntotal"] == 24 and info["labeled"] and info["classes"] == [
        "class_0", "class_1", "class_2"]
    row = client.get("/api/random").json()["row"]
    assert 0 <= row < 24
    thumb = client.get(f"/thumb/{row}")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(thumb.content))
    assert img.size == (96, 96)
    assert client.get("/healthz").json() == {"status": "ok", "count": 24}
    assert "search the collection" in client.get("/").text


def test_filter_by_label_prefix_or_rows_in_json_and_multipart(client, collection):
    r = client.post("/api/search", json={"row": 0, "k": 5, "filter": {"label": "class_2"}})
    assert r.status_code == 200, r.text
    assert [h["class_name"] for h in r.json()["results"]] == ["class_2"] * 5
    rows = client.post("/api/search", json={"row": 0, "k": 5, "filter": {"rows": [3, 9, 20]}})
    assert sorted(h["row"] for h in rows.json()["results"]) == [3, 9, 20]
    path = load_embeddings(collection["emb"])[1][4]["path"]
    start = path[: path.rindex("/") + 1]  # row 4's folder
    by_prefix = client.post("/api/search", json={"row": 0, "k": 30,
                                                  "filter": {"path_prefix": start}}).json()
    assert by_prefix["results"] and all(h["path"].startswith(start)
                                        for h in by_prefix["results"])
    query = collection["images"] / "class_1" / "img_3.png"
    up = client.post("/api/search?k=4", files={"image": ("q.png", png_bytes(query), "image/png")},
                     data={"filter": '{"label": "class_0"}'})
    assert [h["class_name"] for h in up.json()["results"]] == ["class_0"] * 4
    for bad in ({"rows": [99]}, {"rows": "1"}, {"colour": "red"}, "{x"):
        r = client.post("/api/search", json={"row": 0, "filter": bad})
        assert r.status_code == 400 and "filter" in r.json()["error"], r.text


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width × height pixels (and holds none): decoding it would be a bomb."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0,
                                                               0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.mark.parametrize("request_kwargs,status,message", [
    (dict(files={"image": ("x.png", png_header(7000, 7000), "image/png")}), 413, "pixels"),
    (dict(files={"image": ("x.png", png_header(100_000, 100_000), "image/png")}), 413,
     "too large"),
    (dict(content=b'{"row": 1, "k": 1e999}', headers={"content-type": "application/json"}), 400,
     "k must be"),
    (dict(content=b'{"row": Infinity}', headers={"content-type": "application/json"}), 400,
     "row must be"),
    (dict(content=b"[" * 40_000, headers={"content-type": "application/json"}), 400,
     "not valid JSON"),
    (dict(files={"image": ("x.png", b"not an image at all", "image/png")}), 415, "not an image"),
    (dict(files={"image": ("x.png", b"", "image/png")}), 400, "empty"),
    (dict(files={"image": ("big.png", b"\0" * 60_000, "image/png")}), 413, "limit"),
    (dict(files={"photo": ("x.png", b"123", "image/png")}), 400, "field named 'image'"),
    (dict(json={"vector": [0.1, 0.2]}), 400, "must have"),
    (dict(content=b'{"vector": [' + b", ".join([b"NaN"] * 8) + b"]}",
          headers={"content-type": "application/json"}), 400, "NaN"),
    (dict(json={"row": 10_000}), 404, "no row"),
    (dict(json={"row": "../../etc/passwd"}), 400, "row must be an integer"),
    (dict(json={"row": 1, "k": 0}), 400, "k must be"),
    (dict(json={"row": 1, "k": -3}), 400, "k must be"),
    (dict(json=[1, 2]), 400, "send"),
    (dict(content=b"{broken", headers={"content-type": "application/json"}), 400, "not valid JSON"),
    (dict(content=b"hello", headers={"content-type": "text/plain"}), 415, "send an image"),
])
def test_bad_requests_get_a_4xx_with_a_message_and_the_server_stays_up(
        client, request_kwargs, status, message):
    r = client.post("/api/search", **request_kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("url", ["/thumb/../../etc/passwd", "/thumb/..%2F..%2Fetc%2Fpasswd",
                                 "/thumb/-1", "/thumb/24", "/thumb/1e3", "/api/search?k=../x",
                                 "/static/../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd"])
def test_paths_in_urls_never_reach_the_file_system(client, url):
    r = client.post(url) if url.startswith("/api/search") else client.get(url)
    assert 400 <= r.status_code < 500
    assert "root:" not in r.text and "error" in r.json()


TOKEN = "s3cret-token"
ROUTES = [("get", "/", {}), ("get", "/healthz", {}), ("get", "/api/info", {}),
          ("get", "/api/random", {}), ("get", "/thumb/3", {}),
          ("post", "/api/search", {"json": {"row": 1, "k": 2}}),
          ("post", "/api/search/batch", {"files": [("image", ("a.png", b"", "image/png"))]})]


@pytest.fixture(scope="module")
def guarded(collection):
    from fastapi.testclient import TestClient

    return TestClient(create_app(ServeConfig(index=str(collection["index"]), device="cpu",
                                             token=TOKEN, rate_limit=0)))


@pytest.mark.parametrize("method,url,kwargs", ROUTES)
def test_every_route_needs_the_token(guarded, method, url, kwargs):
    guarded.cookies.clear()
    call = getattr(guarded, method)
    assert call(url, **kwargs).status_code == 401
    assert call(url, headers={"Authorization": "Bearer wrong"}, **kwargs).status_code == 401
    ok = call(url, headers={"Authorization": f"Bearer {TOKEN}"}, **kwargs)
    assert ok.status_code == 200, ok.text


def test_the_page_url_token_sets_a_cookie_that_lets_thumbnails_in(guarded):
    guarded.cookies.clear()
    assert guarded.get("/thumb/2").status_code == 401
    page = guarded.get(f"/?token={TOKEN}")
    assert page.status_code == 200 and "httponly" in page.headers["set-cookie"].lower()
    assert guarded.get("/thumb/2").status_code == 200  # the cookie, no header
    guarded.cookies.clear()


def test_rate_limit_answers_429_past_the_burst(collection):
    from fastapi.testclient import TestClient

    c = TestClient(create_app(ServeConfig(index=str(collection["index"]), device="cpu",
                                          rate_limit=0.01, rate_burst=3)))
    codes = [c.get("/healthz").status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    # the defaults let a page with the most hits (max_k thumbnails) load at once
    d = TestClient(create_app(ServeConfig(index=str(collection["index"]), device="cpu")))
    assert {d.get("/thumb/0").status_code for _ in range(ServeConfig.max_k + 20)} == {200}


@pytest.mark.parametrize("extra,refused", [([], True), (["--public"], False)])
def test_an_open_host_without_token_refuses_to_start(collection, monkeypatch, caplog, extra,
                                                     refused):
    from hebbret import serve as serve_module
    from hebbret.cli import main

    monkeypatch.delenv("HEBBRET_TOKEN", raising=False)
    started = []
    monkeypatch.setattr(serve_module, "create_app", lambda cfg: started.append(cfg))
    monkeypatch.setitem(sys.modules, "uvicorn", type(sys)("uvicorn"))
    sys.modules["uvicorn"].run = lambda *a, **k: None
    rc = main(["serve", str(collection["index"]), "--host", "0.0.0.0", *extra])
    assert (rc == 2) == refused and bool(started) != refused
    assert ("refusing to serve on 0.0.0.0" in caplog.text) == refused
    assert ("--public" in caplog.text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(collection):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "hebbret", "serve", str(collection["index"]),
                             "--port", str(port), "--device", "cpu", "--token", TOKEN],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(urllib.request.Request(
                url + "/healthz", headers={"Authorization": f"Bearer {TOKEN}"}), timeout=1)
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stdout.read().decode()) from None
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium)")
def test_the_page_in_a_real_browser_uploads_shows_results_and_searches_a_result(
        server, collection):
    from playwright.sync_api import expect, sync_playwright

    from hebbret.dedup import near_duplicates

    query = collection["images"] / "class_2" / "img_5.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"{server}/?token={TOKEN}")  # once: the cookie carries it from then on
            expect(page.locator("#info")).to_contain_text("24 images")
            page.fill("#k", "6")
            page.set_input_files("#file", str(query))
            cards = page.locator(".result")
            expect(cards).to_have_count(6)
            labels = cards.locator(".label").all_inner_texts()
            assert set(labels) <= {"class_0", "class_1", "class_2"}
            expect(page.locator("#prediction")).to_contain_text("predicted: class_")
            page.wait_for_function(  # every thumbnail loads (they arrive after the cards)
                "() => [...document.querySelectorAll('.result img')].every("
                "i => i.complete && i.naturalWidth > 0)", timeout=10_000)
            row = cards.nth(2).get_attribute("data-row")
            cards.nth(2).click()
            expect(page.locator("#querytext")).to_contain_text(f"row {row}")
            expect(cards).to_have_count(6)
            assert cards.first.get_attribute("data-row") == row  # a row finds itself first
            page.select_option("#label", "class_0")  # the filter control: one label only
            page.click("#random")
            expect(cards.locator(".label").first).to_have_text("class_0")
            assert set(cards.locator(".label").all_inner_texts()) == {"class_0"}
            assert page.locator("#error").inner_text() == ""
            page.fill("#threshold", "0.5")  # the near-duplicates view
            page.click("#dups")
            expect(page.locator("#querytext")).to_contain_text("groups of near-duplicates")
            groups = near_duplicates(collection["index"], 0.5, quiet=True)["groups"]
            expect(page.locator(".group")).to_have_count(min(len(groups), 100))
            expect(page.locator(".group").first.locator(".result")).to_have_count(
                len(groups[0]["rows"]))
        finally:
            browser.close()


@pytest.mark.slow
def test_bench_serve_reports_latency_throughput_and_flat_memory(collection, tmp_path):
    bench = load_tool("bench_serve")
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- serve-results:begin -->\nold\n<!-- serve-results:end -->\nb\n")
    doc = bench.main([str(collection["index"]), "--clients", "2", "--seconds", "2",
                      "--queries", "5", "--results", str(tmp_path / "serve.json"),
                      "--readme", str(readme)])
    row = doc["stages"]["serve"]["2-clients"]
    assert row["requests"] > 0 and row["errors"] == 0 and row["server_alive_after"]
    assert 0 < row["latency_ms"]["p50"] <= row["latency_ms"]["p95"]
    assert row["server_rss_mib"]["start"] > 0
    assert "searches/s" in readme.read_text() and "old" not in readme.read_text()


def test_batch_search_of_a_folder_writes_one_line_per_query_and_names_bad_files(
        collection, tmp_path):
    import json

    from hebbret.cli import main
    from hebbret.search import search_folder

    queries = tmp_path / "queries"
    (queries / "sub").mkdir(parents=True)
    picks = ["class_0/img_1.png", "class_1/img_2.png", "class_2/img_3.png"]
    for i, name in enumerate(picks):
        shutil.copy(collection["images"] / name, queries / ("sub" if i else "") / f"q{i}.png")
    (queries / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "results.jsonl"
    counts = search_folder(collection["index"], queries, out, k=4, batch_size=2, quiet=True)
    assert counts == {"queries": 3, "errors": 1}
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(x["query"]).name for x in lines] == ["broken.png", "q0.png", "q1.png", "q2.png"]
    assert "broken.png" in lines[0]["error"] and "results" not in lines[0]
    one_by_one = search_by_image(collection["index"], [x["query"] for x in lines[1:]], k=4)
    assert [[h["row"] for h in x["results"]] for x in lines[1:]] == [
        [h["row"] for h in x["results"]] for x in one_by_one]
    assert main(["search", str(collection["index"]), str(queries), "--out", str(tmp_path / "b"),
                 "--label", "class_1", "--k", "2"]) == 0
    filtered = [json.loads(line) for line in (tmp_path / "b").read_text().splitlines()]
    assert {h["class_name"] for x in filtered[1:] for h in x["results"]} == {"class_1"}
    assert main(["search", str(collection["index"]), str(queries)]) == 2  # no --out


def test_several_images_per_call_match_one_call_each_and_name_the_bad_one(client, collection):
    names = ["class_0/img_2.png", "class_2/img_7.png"]
    files = [("image", (n, png_bytes(collection["images"] / n), "image/png")) for n in names]
    files.insert(1, ("image", ("bad.png", b"nope", "image/png")))
    r = client.post("/api/search/batch?k=3", files=files)
    assert r.status_code == 200, r.text
    answers = r.json()["queries"]
    assert [a["query"] for a in answers] == [names[0], "bad.png", names[1]]
    assert answers[1]["status"] == 415 and "not an image" in answers[1]["error"]
    for a, n in zip([answers[0], answers[2]], names, strict=True):
        one = client.post("/api/search?k=3", files={"image": (n, png_bytes(
            collection["images"] / n), "image/png")}).json()
        assert [h["row"] for h in a["results"]] == [h["row"] for h in one["results"]]
    assert client.post("/api/search/batch", json={"row": 1}).status_code == 415
