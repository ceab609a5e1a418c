"""Load test of `hebbret serve`: N concurrent clients search for a bounded time.

    python tools/bench_serve.py runs/hebbret-run/hebbian/index --clients 4 --seconds 30 \\
        --readme docs/results.md

Starts ``python -m hebbret serve INDEX`` on a free localhost port, fetches query images from the
server itself (thumbnails of random rows, so any collection works, files or not), then
``--clients`` threads each POST one image after the other to ``/api/search`` for ``--seconds``.
Reports p50/p95/max latency and throughput, and the server's resident memory sampled every
0.25 s (start, end, peak); the server must still answer /healthz at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from _common.results import ResultsFile, markdown_table, publish
from hebbret.runtime import load_average

log = logging.getLogger("bench_serve")
REPO = Path(__file__).resolve().parent.parent
SECTION = "serve-results"  # docs/results.md markers <!-- serve-results:begin/end -->


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def post_image(url: str, png: bytes, k: int) -> float:
    boundary = "hebbretbench"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"q.png\""
            f"\r\nContent-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"{url}/api/search?k={k}", data=body, method="POST", headers={
        "content-type": f"multipart/form-data; boundary={boundary}"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as r:
        json.loads(r.read())
    return time.perf_counter() - t0


def start_server(index: str, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "hebbret", "serve", index, "--port", str(port),
                             "--device", "cpu", "--rate-limit", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stdout.read().decode()) from None
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not come up within 60 s")


def bench(index: str, clients: int, seconds: float, k: int, queries: int) -> dict[str, Any]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = start_server(index, port)
    try:
        count = json.loads(urllib.request.urlopen(f"{url}/api/info").read())["ntotal"]
        rows = np.random.default_rng(0).integers(0, count, queries)
        images = [urllib.request.urlopen(f"{url}/thumb/{r}").read() for r in rows]
        post_image(url, images[0], k)  # warm-up
        rss = [rss_mib(proc.pid)]
        latencies: list[float] = []
        errors: list[str] = []
        stop = time.perf_counter() + seconds

        def client(c: int) -> None:
            i = c
            while time.perf_counter() < stop:
                try:
                    latencies.append(post_image(url, images[i % len(images)], k))
                except OSError as e:
                    errors.append(str(e))
                i += clients

        threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            rss.append(rss_mib(proc.pid))
            time.sleep(0.25)
        wall = time.perf_counter() - t0
        alive = json.loads(urllib.request.urlopen(f"{url}/healthz").read())["status"] == "ok"
        rss.append(rss_mib(proc.pid))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    ms = sorted(1000 * v for v in latencies)
    return {"clients": clients, "seconds": round(wall, 1), "requests": len(ms),
            "errors": len(errors), "throughput_rps": round(len(ms) / wall, 2),
            "latency_ms": {"p50": round(statistics.median(ms), 1),
                           "p95": round(ms[int(0.95 * (len(ms) - 1))], 1), "max": round(ms[-1], 1)},
            "server_rss_mib": {"start": round(rss[0], 1), "end": round(rss[-1], 1),
                               "peak": round(max(rss), 1),
                               "quarters": [round(rss[int(f * (len(rss) - 1))], 1)
                                            for f in (0.25, 0.5, 0.75)]},
            "server_alive_after": alive, "k": k, "query_images": queries, "index": index,
            "load_avg_end": load_average()}


def render(doc: dict[str, Any]) -> str:
    rows = doc.get("stages", {}).get("serve", {})
    if not rows:
        return "Not measured yet.\n"
    table = [[r["clients"], r["requests"], r["throughput_rps"], r["latency_ms"]["p50"],
              r["latency_ms"]["p95"], r["errors"],
              " → ".join(f"{v:.0f}" for v in [r['server_rss_mib']['start'],
                                               *r['server_rss_mib'].get('quarters', []),
                                               r['server_rss_mib']['end']])]
             for r in rows.values()]
    first = next(iter(rows.values()))
    return (markdown_table(["clients", "requests", "searches/s", "p50 ms", "p95 ms", "errors",
                            "server RSS MiB: start → ¼ → ½ → ¾ → end"], table, digits=1)
            + f"\nEach request uploads a PNG (a thumbnail of a random row), which the server "
              f"decodes, embeds and searches (k = {first['k']}), {first['seconds']:.0f} s per row "
              f"(`{first['command']}`, {first['git_commit']}, {first['machine']}).\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("index", help="index dir to serve")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--queries", type=int, default=50, help="distinct query images")
    parser.add_argument("--results", default=str(REPO / "tools/results/serve.json"))
    parser.add_argument("--readme", default="", help="rewrite this file's serve section (docs/results.md)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    res = ResultsFile(args.results, ["python", "tools/bench_serve.py", *argv], REPO,)
    for clients in args.clients:
        row = bench(args.index, clients, args.seconds, args.k, args.queries)
        res.put("serve", f"{clients}-clients", row)
        log.info("%d clients: %s", clients, row)
    publish(render(res.doc), args.readme, SECTION)
    return res.doc


if __name__ == "__main__":
    main()
