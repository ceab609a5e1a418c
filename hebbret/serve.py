"""``hebbret serve INDEX``: search a collection by image in the browser, and a JSON API.

One FastAPI app over one index dir: the page (``static/serve.html``, no build step),
``POST /api/search`` (an uploaded image, a JSON vector or a row of the collection, optionally
with ``filter`` {"path_prefix", "label", "rows"} applied inside FAISS -> the hits of
``hebbret search --json`` and, for a labeled collection, the weighted kNN vote of ``eval knn``),
``GET /api/info``, ``GET /api/random``, ``GET /thumb/<row>`` and ``GET /healthz``.

Who gets in: with ``cfg.token`` set every route answers 401 unless the request carries the token,
as ``Authorization: Bearer TOKEN`` or the ``hebbret_token`` cookie; opening the page once as
``/?token=TOKEN`` sets that cookie (HttpOnly, SameSite=Strict), so the page's fetches and its
``<img>`` thumbnails carry it without any script seeing it. Each client IP gets a token bucket of
``rate_limit`` requests/s (``rate_burst`` at once); past it, 429.

Only rows of the index are ever read from disk: no path from a request reaches the file system.
Uploads are capped (``max_upload_mb``); anything that is not a decodable image, a wrong-sized
vector, a bad k or row is a 4xx with ``{"error": message}``, and never stops the server.
"""

# no `from __future__ import annotations`: FastAPI reads the route signatures at runtime
import functools
import hmac
import io
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .config import DEDUP_THRESHOLD, KNN_TEMPERATURE, LOOPBACK, NAMED_DATASETS, ServeConfig
from .data import open_dataset
from .dedup import duplicate_groups
from .embed import embed_images, load_embeddings, spec_of
from .eval.knn import weighted_vote
from .index import index_info, load_index, search_loaded, version_key
from .runtime import pick_device
from .search import format_results, model_of_index, select_rows

log = logging.getLogger(__name__)

PAGE = Path(__file__).parent / "static" / "serve.html"


class ClientError(ValueError):
    """A request the server refuses: its status code and a message for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Collection:
    """An index with its items, the model it records (sha256-checked as `search` does), the
    embedded vectors (search by row) and the images of its rows (thumbnails)."""

    def __init__(self, cfg: "ServeConfig") -> None:
        self.cfg = cfg
        self.index_dir = Path(cfg.index)
        self.version = version_key(self.index_dir)  # before loading: a newer one is seen
        self.loaded = load_index(self.index_dir)
        _, self.items, self.meta = self.loaded
        self.model, self.card = model_of_index(self.index_dir, self.meta, cfg.run)
        self.device = str(pick_device(cfg.device))
        self.labels = np.full(len(self.items), -1, dtype=np.int64)
        self.class_names: dict[int, str] = {}
        for row, it in enumerate(self.items):  # one pass over the lazily parsed items
            label = it.get("label", -1)
            self.labels[row] = label
            if label >= 0:
                self.class_names.setdefault(int(label), it.get("class_name") or str(label))
        # the vectors only (search by row): the index already holds the items
        self.vectors, _, self.emb_meta = load_embeddings(self.meta["embeddings"],
                                                         check_finite=False, read_items=False)
        if len(self.vectors) != len(self.items):
            raise ValueError(f"{self.meta['embeddings']} has {len(self.vectors)} rows but the "
                             f"index {self.index_dir} has {len(self.items)}; rebuild the index")
        self._info = {**index_info(self.index_dir), "labeled": bool(self.class_names),
                      "classes": [self.class_names[c] for c in sorted(self.class_names)],
                      "input": {"in_chans": self.card.input.in_chans,
                                "img_size": list(self.card.input.img_size)}}
        self.lock = threading.Lock()  # one search at a time: the model and FAISS use every core
        self._images_lock = threading.Lock()
        self._dataset: Any = None
        self._where: dict[str, int] = {}

    # ----------------------------------------------------------------------------- search
    def info(self) -> dict[str, Any]:
        return self._info

    def _k(self, k: Any) -> int:
        try:
            k = int(self.cfg.k if k is None else k)
        except (TypeError, ValueError, OverflowError):
            raise ClientError(400, f"k must be an integer, got {k!r}") from None
        if not 1 <= k <= self.cfg.max_k:
            raise ClientError(400, f"k must be between 1 and {self.cfg.max_k}, got {k}")
        return k

    def _row(self, row: Any) -> int:
        try:
            row = int(row)
        except (TypeError, ValueError, OverflowError):
            raise ClientError(400, f"row must be an integer, got {row!r}") from None
        if not 0 <= row < len(self.items):
            raise ClientError(404, f"no row {row}: the collection has rows 0..{len(self.items) - 1}")
        return row

    def rows_of(self, where: Any) -> np.ndarray | None:
        """The rows a request's ``filter`` ({"path_prefix", "label", "rows"}, any of them)
        allows; None: all of them."""
        if where is None:
            return None
        if isinstance(where, str):
            try:
                where = json.loads(where)
            except (json.JSONDecodeError, RecursionError):
                raise ClientError(400, "filter is not valid JSON") from None
        if not isinstance(where, dict) or set(where) - {"path_prefix", "label", "rows"}:
            raise ClientError(400, 'filter must be {"path_prefix": str, "label": str, '
                                   '"rows": [N, ...]} (any of them)')
        prefix, label, rows = where.get("path_prefix"), where.get("label"), where.get("rows")
        if (prefix is not None and not isinstance(prefix, str)) or (
                rows is not None and not (isinstance(rows, list)
                                          and all(isinstance(r, int) for r in rows))):
            raise ClientError(400, "filter: path_prefix must be a string, rows a list of ints")
        try:
            if rows is None:  # a folder or a label: the same rows every time it is asked
                return self._rows_where(prefix, None if label is None else str(label))
            return select_rows(self.items, prefix, None if label is None else str(label), rows)
        except ValueError as e:
            raise ClientError(400, f"filter: {e}") from None

    @functools.lru_cache(maxsize=64)  # noqa: B019 - one Collection per index version
    def _rows_where(self, prefix: str | None, label: str | None) -> np.ndarray | None:
        rows = select_rows(self.items, prefix, label)
        if rows is not None:
            rows.flags.writeable = False  # shared by every request that asks for it
        return rows

    def search_vector(self, vector: Any, k: Any = None, query: str = "vector",
                      where: Any = None) -> dict[str, Any]:
        k = self._k(k)
        rows = self.rows_of(where)
        try:
            v = np.asarray(vector, dtype=np.float32)
        except (TypeError, ValueError):
            raise ClientError(400, "vector must be a list of numbers") from None
        if v.ndim != 1 or len(v) != self.vectors.shape[1]:
            raise ClientError(400, f"vector must have {self.vectors.shape[1]} numbers, got shape "
                                   f"{list(v.shape)}")
        if not np.isfinite(v).all():
            raise ClientError(400, "vector holds NaN or inf")
        with self.lock:
            found = search_loaded(self.loaded, v[None], k, name=str(self.index_dir), rows=rows)
        hits = format_results(found, [query])[0]
        scores = np.array([h["score"] for h in hits["results"]])
        rows = np.array([h["row"] for h in hits["results"]], dtype=np.int64)
        votes = weighted_vote(scores, self.labels[rows]) if len(rows) else {}
        prediction = None
        if votes:
            label, share = next(iter(votes.items()))
            prediction = {"label": label, "class_name": self.class_names.get(label, str(label)),
                          "share": share, "temperature": KNN_TEMPERATURE,
                          "votes": {self.class_names.get(c, str(c)): v for c, v in votes.items()}}
        return {**hits, "k": k, "prediction": prediction}

    def _check_image(self, data: bytes) -> None:
        """Refuse an empty, unreadable or too large upload from its header (never decoded)."""
        if not data:
            raise ClientError(400, "the upload is empty; send an image file")
        try:  # the header only: refuse huge images before decoding them
            with Image.open(io.BytesIO(data)) as img:
                pixels = img.size[0] * img.size[1]
        except Image.DecompressionBombError as e:
            raise ClientError(413, f"the image is too large to decode ({e})") from None
        except (OSError, ValueError, SyntaxError) as e:
            raise ClientError(415, f"not an image this server can read ({e})") from None
        if pixels > self.cfg.max_pixels:
            raise ClientError(413, f"the image has {pixels:,} pixels; the limit is "
                                   f"{self.cfg.max_pixels:,}")

    def _embed(self, blobs: list[bytes]) -> np.ndarray:
        try:
            with self.lock:
                return embed_images(self.model, self.card, [io.BytesIO(b) for b in blobs],
                                    spec_of(self.meta), self.device)
        except ValueError as e:
            raise ClientError(415, f"not an image this server can read ({e})") from None

    def search_image(self, data: bytes, k: Any = None, where: Any = None) -> dict[str, Any]:
        self._check_image(data)
        return self.search_vector(self._embed([data])[0], k, query="upload", where=where)

    def search_images(self, uploads: list[tuple[str, bytes]], k: Any = None,
                      where: Any = None) -> dict[str, Any]:
        """Several uploads ((name, bytes) each) embedded in one batch: {"queries": [the answer
        of :meth:`search_image` per upload, or {"query", "error", "status"}]}."""
        answers: dict[int, dict[str, Any]] = {}
        good = []
        for i, (name, data) in enumerate(uploads):
            try:
                self._check_image(data)
                good.append(i)
            except ClientError as e:
                answers[i] = {"query": name, "error": str(e), "status": e.status}
        vecs = self._embed([uploads[i][1] for i in good]) if good else []
        for i, v in zip(good, vecs, strict=True):
            answers[i] = self.search_vector(v, k, query=uploads[i][0], where=where)
        return {"queries": [answers[i] for i in range(len(uploads))]}

    def search_row(self, row: Any, k: Any = None, where: Any = None) -> dict[str, Any]:
        row = self._row(row)
        out = self.search_vector(np.asarray(self.vectors[row], dtype=np.float32), k,
                                 query=f"row {row}", where=where)
        return {**out, "query_row": row, "query_item": self.items[row]}

    # ------------------------------------------------------------------------- thumbnails
    def _images(self) -> Any:
        """The dataset the rows were embedded from (read lazily, once)."""
        with self._images_lock:
            if self._dataset is None:
                self._open_images()
        return self._dataset

    def _open_images(self) -> None:
        em = self.emb_meta
        named = em.get("data") in NAMED_DATASETS
        root = em.get("data_root")
        source = em["data"] if named else root
        dataset = open_dataset(
            source, em.get("split", "train"), self.card.input.in_chans, self.card.input.img_size,
            data_root=root if named and root and Path(root).is_dir() else None, cache=False)
        self._where = {it.path: i for i, it in enumerate(dataset.items)}
        self._dataset = dataset

    def duplicates(self, threshold: Any = None, limit: int = 100) -> dict[str, Any]:
        """``hebbret dedup`` of the served index: its first ``limit`` groups (largest first),
        computed once per threshold and version."""
        try:
            threshold = float(DEDUP_THRESHOLD if threshold is None else threshold)
        except (TypeError, ValueError):
            raise ClientError(400, f"threshold must be a number, got {threshold!r}") from None
        if not 0 < threshold < 1:
            raise ClientError(400, f"threshold must be between 0 and 1, got {threshold}")
        if self.meta.get("metric") != "ip":
            raise ClientError(400, "near-duplicates need an index of metric ip (cosine)")
        with self.lock:
            found = self._duplicates(round(threshold, 4))
        return {**found, "groups_total": len(found["groups"]), "groups": found["groups"][:limit]}

    @functools.lru_cache(maxsize=8)  # noqa: B019 - one Collection per index version
    def _duplicates(self, threshold: float) -> dict[str, Any]:
        return duplicate_groups(self.loaded, threshold, quiet=True, name=str(self.index_dir))

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one Collection per server process
    def thumbnail(self, row: int) -> bytes:
        """PNG bytes of row ``row``'s image, at most ``thumb_px`` a side (small images scaled up
        without smoothing)."""
        row = self._row(row)
        ds = self._images()
        i = self._where.get(self.items[row]["path"])
        if i is None:
            raise ClientError(404, f"row {row}'s image is no longer in the collection")
        try:
            arr = ds.raw(i)
        except (OSError, ValueError, SyntaxError):
            raise ClientError(404, f"row {row}'s image cannot be read any more") from None
        img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
        scale = self.cfg.thumb_px / max(img.size)
        size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
        img = img.resize(size, Image.NEAREST if scale >= 1 else Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()


class Live:
    """The served collection, opened again when the index dir holds a new version (an
    `index update` published a generation, or a build replaced it): one read and one stat of
    the index dir at most every ``cfg.reload_s``; requests under way keep the collection they
    started with. A version that fails to open is logged and the old one served on."""

    def __init__(self, cfg: ServeConfig, collection: Collection | None = None) -> None:
        self.cfg, self.col = cfg, collection or Collection(cfg)
        self.checked = time.monotonic()
        self.lock = threading.Lock()

    def get(self) -> Collection:
        now = time.monotonic()
        if now - self.checked < self.cfg.reload_s or not self.lock.acquire(blocking=False):
            return self.col
        try:
            self.checked = now
            if version_key(self.cfg.index) != self.col.version:
                self.col = Collection(self.cfg)
                log.info("serving the new version of %s (%d rows)", self.cfg.index,
                         len(self.col.items))
        except (OSError, ValueError) as e:
            log.warning("%s changed but cannot be opened (%s); still serving the version "
                        "loaded before", self.cfg.index, e)
        finally:
            self.lock.release()
        return self.col


def create_app(cfg: ServeConfig, collection: Collection | None = None) -> Any:
    """The FastAPI app serving ``cfg.index`` (a new version of it without a restart)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, Response

    live = Live(cfg, collection)
    app = FastAPI(title="hebbret", docs_url="/api/docs", redoc_url=None)
    _answer_errors_as_json(app)
    _guard(app, cfg)
    rng = np.random.default_rng()

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text()

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "count": len(live.get().items)}

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return live.get().info()

    @app.get("/api/random")
    def random_row() -> dict[str, Any]:
        col = live.get()
        row = int(rng.integers(len(col.items)))
        return {"row": row, "item": col.items[row]}

    @app.get("/thumb/{row}")
    def thumb(row: int) -> Response:
        return Response(live.get().thumbnail(row), media_type="image/png",
                        headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/duplicates")
    async def duplicates(threshold: float | None = None) -> dict[str, Any]:
        return await _run(live.get().duplicates, threshold)

    @app.post("/api/search")
    async def search(request: Request, k: int | None = None) -> dict[str, Any]:
        return await _search(request, k, live.get(), cfg.max_upload_mb)

    @app.post("/api/search/batch")
    async def search_batch(request: Request, k: int | None = None) -> dict[str, Any]:
        return await _search_batch(request, k, live.get(), cfg.max_upload_mb)

    return app


COOKIE = "hebbret_token"


class RateLimiter:
    """A token bucket per client: ``rate`` requests/s refill, ``burst`` at most."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, max(1, burst)
        self.buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, last time)
        self.lock = threading.Lock()

    def allow(self, client: str) -> bool:
        now = time.monotonic()
        with self.lock:
            if len(self.buckets) > 10_000:  # forget idle clients (full buckets)
                self.buckets = {c: b for c, b in self.buckets.items()
                                if b[0] + (now - b[1]) * self.rate < self.burst}
            tokens, last = self.buckets.get(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            ok = tokens >= 1.0
            self.buckets[client] = (tokens - 1.0 if ok else tokens, now)
        return ok


def _token_of(request: Any) -> str:
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.query_params.get("token") or request.cookies.get(COOKIE, "")


def _guard(app: Any, cfg: ServeConfig) -> None:
    """The token check (constant-time) and the per-client rate limit, before every route."""
    from fastapi.responses import JSONResponse

    limiter = RateLimiter(cfg.rate_limit, cfg.rate_burst) if cfg.rate_limit > 0 else None
    expected = (cfg.token or "").encode()

    @app.middleware("http")
    async def _check(request: Any, call_next: Any) -> Any:
        client = request.client.host if request.client else "?"
        if limiter is not None and not limiter.allow(client):
            return JSONResponse({"error": "too many requests; slow down"}, status_code=429,
                                headers={"Retry-After": "1"})
        if cfg.token:
            given = _token_of(request).encode()
            if not hmac.compare_digest(given, expected):
                return JSONResponse({"error": "this server needs a token: send 'Authorization: "
                                     "Bearer TOKEN', or open the page once as /?token=TOKEN"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
        response = await call_next(request)
        if cfg.token and request.query_params.get("token"):
            response.set_cookie(COOKIE, cfg.token, httponly=True, samesite="strict",
                                secure=request.url.scheme == "https")
        return response


def check_access(cfg: ServeConfig) -> None:
    """Refuse (ValueError) a non-loopback host without a token or ``public``."""
    if cfg.host in LOOPBACK:
        return
    if cfg.token:
        return
    if not cfg.public:
        raise ValueError(f"refusing to serve on {cfg.host} without a token: anyone who can reach "
                         "it could search the collection and see its images; pass --token TOKEN "
                         "(or set HEBBRET_TOKEN), or --public to serve it open")
    log.warning("serving on %s with --public: anyone who can reach this address can search the "
                "collection and see its images", cfg.host)


def _answer_errors_as_json(app: Any) -> None:
    """Every refused request answers {"error": message} with its status code."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    @app.exception_handler(ClientError)
    def _client_error(request: Request, e: ClientError) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=e.status)

    @app.exception_handler(HTTPException)
    def _http_error(request: Request, e: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        where = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                          for err in e.errors())
        return JSONResponse({"error": f"invalid request ({where})"}, status_code=422)


def _check_length(request: Any, max_upload_mb: float) -> None:
    """Refuse a request without a Content-Length or past the upload limit, before reading it."""
    length = request.headers.get("content-length")
    if length is None:
        raise ClientError(411, "send a Content-Length with the request")
    if int(length) > max_upload_mb * 2**20:
        raise ClientError(413, f"the upload is {int(length) / 2**20:.1f} MB; the limit is "
                               f"{max_upload_mb:g} MB")


ASK = "send {\"vector\": [...]} or {\"row\": N}"


async def _search(request: Any, k: Any, col: Collection, max_upload_mb: float) -> dict[str, Any]:
    """POST /api/search: an image (multipart field ``image``, or the bytes with an image/*
    content type) or JSON {"vector": [...]} / {"row": N}; ``k`` from the query or the body."""
    _check_length(request, max_upload_mb)
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=4)
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise ClientError(400, "send the image in a form field named 'image'")
        return await _run(col.search_image, await upload.read(), k if k is not None
                          else form.get("k"), form.get("filter"))
    if kind.startswith("application/json"):
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise ClientError(400, "the body is not valid JSON") from None
        if not isinstance(body, dict) or not {"vector", "row"} & set(body):
            raise ClientError(400, ASK)
        k = k if k is not None else body.get("k")
        if "vector" in body:
            return await _run(col.search_vector, body["vector"], k, "vector", body.get("filter"))
        return await _run(col.search_row, body["row"], k, body.get("filter"))
    if kind.startswith("image/") or kind == "application/octet-stream":
        return await _run(col.search_image, await request.body(), k)
    raise ClientError(415, "send an image (multipart field 'image', or the bytes with an "
                           "image/* content type) or JSON {\"vector\": [...]} / {\"row\": N}")


MAX_BATCH = 64  # images per /api/search/batch call


async def _search_batch(request: Any, k: Any, col: Collection, max_upload_mb: float
                        ) -> dict[str, Any]:
    """POST /api/search/batch: several multipart fields ``image`` (at most MAX_BATCH, all of
    them within the upload limit), embedded in one batch; ``k`` and ``filter`` as for one."""
    _check_length(request, max_upload_mb)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ClientError(415, "send the images as multipart form fields named 'image'")
    form = await request.form(max_files=MAX_BATCH, max_fields=MAX_BATCH + 4)
    uploads = [u for u in form.getlist("image") if not isinstance(u, str)]
    if not uploads:
        raise ClientError(400, "send the images in form fields named 'image'")
    blobs = [(u.filename or f"upload {i}", await u.read()) for i, u in enumerate(uploads)]
    return await _run(col.search_images, blobs, k if k is not None else form.get("k"),
                      form.get("filter"))


async def _run(fn: Any, *args: Any) -> Any:
    """CPU-bound work off the event loop (the server keeps answering /healthz meanwhile)."""
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


def serve(cfg: ServeConfig) -> None:
    """Load the collection and serve it until interrupted."""
    import uvicorn

    check_access(cfg)
    app = create_app(cfg)
    log.info("serving %s at http://%s:%d/", cfg.index, cfg.host, cfg.port)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning",
                workers=1, limit_concurrency=int(os.environ.get("HEBBRET_SERVE_CONCURRENCY", 64)))
