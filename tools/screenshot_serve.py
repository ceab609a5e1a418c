"""A screenshot of `hebbret serve` with real results, taken by headless Chromium (Playwright).

    python tools/screenshot_serve.py INDEX QUERY_IMAGE --out docs/serve.png [--k 12]

Starts the server on a free localhost port, uploads QUERY_IMAGE on the page, waits for the
results grid and its thumbnails, and saves a PNG of the page.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import start_server  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    from playwright.sync_api import expect, sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("index")
    parser.add_argument("query")
    parser.add_argument("--out", default="docs/serve.png")
    parser.add_argument("--k", type=int, default=12)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args(argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = start_server(args.index, port)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, headless=True,
                                        args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1100, "height": 720})
            page.goto(f"http://127.0.0.1:{port}/")
            expect(page.locator("#info")).to_contain_text("images")
            page.fill("#k", str(args.k))
            page.set_input_files("#file", args.query)
            expect(page.locator(".result")).to_have_count(args.k, timeout=60_000)
            page.wait_for_function("[...document.images].every(i => i.complete)")
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(args.out)
    return Path(args.out)


if __name__ == "__main__":
    main()
