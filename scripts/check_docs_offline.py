"""Check that the Serve app's API docs render without internet, in a real headless Chromium.

    .venv/bin/python scripts/check_docs_offline.py                      # fits a small synthetic run, serves it
    .venv/bin/python scripts/check_docs_offline.py --artifacts DIR      # serves a fitted run
    .venv/bin/python scripts/check_docs_offline.py --url http://127.0.0.1:8000   # a server already running
    .venv/bin/python scripts/check_docs_offline.py --artifacts DIR --screenshot /tmp/docs.png

FastAPI's default /docs loads Swagger UI from a CDN: offline the page is blank. deployments/docs.py
serves the assets from the fastapi-offline package instead. This script checks, over real HTTP:
  1. /docs and /redoc reference only URLs of this server, and each asset answers 200 with JS/CSS;
  2. Chromium (`chromium --headless --dump-dom --virtual-time-budget`, so Swagger UI's JS runs and
     fetches openapi.json) renders one operation block (`opblock`) per operation of the schema, and
     ReDoc renders every path.
Without --url it starts a local Ray with the app under the route prefix /ltray (the asset URLs must
carry it), and stops both at the end. Chromium comes from the OS: `apt-get install -y chromium`
(Debian; `chromium-browser` on Ubuntu), or set LTRAY_CHROMIUM to a binary. Exit 0 when all passes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("LTRAY_DATA_HOME", str((ROOT.parent / "shared" / "data").resolve()))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

PREFIX = "/ltray"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "chromium-headless-shell", "google-chrome", "headless_shell")
# The same small synthetic run as the tests' small_config: fits in a minute or two on 2 cores.
SMALL_OVERRIDES = ["data.synthetic.n_items=600", "data.synthetic.n_users=300",
                   "data.synthetic.interactions_per_user=25", "cf.iterations=8", "rank.epochs=2",
                   "rank.batch_size=256", "rank.refit_on_all=false", "cf.tune=false", "cf.mix=0.5"]
CONTENT_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


# -- checks over plain HTTP ----------------------------------------------------------------------------
def page_urls(html: str) -> list[str]:
    """Every URL a docs page makes the browser fetch: src/href attributes, Swagger UI's `url:` and ReDoc's spec-url."""
    found = re.findall(r'(?:src|href|spec-url)="([^"]*)"', html) + re.findall(r"\burl: *'([^']*)'", html)
    return [u for u in found if u]


def check_pages(base: str) -> dict[str, list[str]]:
    """/docs and /redoc under `base` (the app's URL, prefix included): every URL they reference is on this
    server and answers 200 (assets with their JS/CSS/PNG type). Returns each page's URLs; raises on a failure."""
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(base))
    out = {}
    with httpx.Client(timeout=30) as client:
        for page in ("/docs", "/redoc"):
            r = client.get(base + page)
            assert r.status_code == 200 and "text/html" in r.headers["content-type"], (page, r.status_code)
            urls = page_urls(r.text)
            assert urls, f"{page} references no URL"
            for url in urls:
                full = urljoin(base + page, url)
                assert full.startswith(origin + urlsplit(base).path + "/"), f"{page} loads {url} from elsewhere"
                got = client.get(full)
                assert got.status_code == 200, (page, url, got.status_code)
                want = CONTENT_TYPES.get(Path(urlsplit(url).path).suffix, "json")
                assert want in got.headers["content-type"], (page, url, got.headers["content-type"])
                assert len(got.content) > 100, (page, url, len(got.content))
            out[page] = urls
    return out


# -- checks in a real browser ---------------------------------------------------------------------------
def find_chromium() -> str | None:
    """LTRAY_CHROMIUM, else the first Chromium-like binary on PATH."""
    if os.environ.get("LTRAY_CHROMIUM"):
        return os.environ["LTRAY_CHROMIUM"]
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def dump_dom(chromium: str, url: str, budget_ms: int = 15000, timeout_s: float = 120) -> str:
    """The DOM after the page's scripts ran: virtual time lets Swagger UI fetch the schema and render."""
    with tempfile.TemporaryDirectory(prefix="ltray-chromium-") as profile:
        cmd = [chromium, "--headless", "--no-sandbox",  # --no-sandbox: root in containers and CI
               "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", f"--user-data-dir={profile}",
               f"--virtual-time-budget={budget_ms}", "--dump-dom", url]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    assert proc.returncode == 0 and proc.stdout.strip(), (proc.returncode, proc.stderr[-2000:])
    return proc.stdout


def screenshot(chromium: str, url: str, png: str, budget_ms: int = 15000) -> None:
    """A PNG of the rendered page, for a person to look at."""
    with tempfile.TemporaryDirectory(prefix="ltray-chromium-") as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--no-first-run", f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
                        "--window-size=1280,1400", "--hide-scrollbars", f"--screenshot={png}", url],
                       capture_output=True, timeout=120, check=True)


def schema_operations(base: str) -> list[tuple[str, str]]:
    """(method, path) of every operation in the app's OpenAPI schema."""
    paths = httpx.get(base + "/openapi.json", timeout=30).json()["paths"]
    return sorted((m.lower(), p) for p, ops in paths.items() for m in ops)


def swagger_operations(dom: str) -> list[tuple[str, str]]:
    """(method, path) of each operation block Swagger UI rendered (`opblock opblock-<method>` holding a
    `data-path`), in page order."""
    blocks = re.split(r'<div class="opblock opblock-', dom)[1:]
    ops = []
    for block in blocks:
        path = re.search(r'class="opblock-summary-path"[^>]*data-path="([^"]*)"', block)
        ops.append((block.split(" ", 1)[0].split('"', 1)[0], path.group(1) if path else ""))
    return ops


def check_browser(base: str, chromium: str) -> dict[str, object]:
    """Swagger UI shows one opblock per schema operation (and no error box); ReDoc shows every path."""
    want = schema_operations(base)
    dom = dump_dom(chromium, base + "/docs")
    got = swagger_operations(dom)
    assert "Failed to load API definition" not in dom and "Unable to render" not in dom, dom[:2000]
    assert sorted(got) == want, (got, want)
    redoc = dump_dom(chromium, base + "/redoc")
    assert "redoc-wrap" in redoc, redoc[:2000]
    missing = [p for _, p in want if p not in redoc]
    assert not missing, missing
    return {"opblocks": len(got), "operations": got, "redoc_bytes": len(redoc)}


# -- a local server to check ------------------------------------------------------------------------------
def serve_locally(artifacts: str | None, workdir: str) -> tuple[str, object]:
    """Ray (2 CPUs) and the app (colocated: two replicas) under PREFIX; returns (base URL, stop())."""
    import ray
    from ray import serve
    from ray.serve.context import _get_global_client

    from deployments.app import build_app

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {k: os.environ[k] for k in ("LTRAY_DATA_HOME", "HF_HUB_OFFLINE")}})
    if artifacts is None:  # the fit's embed stage runs on Ray: after ray.init
        from ltray.config import load_config
        from ltray.pipeline import fit

        artifacts = os.path.join(workdir, "art")
        print("fitting a small synthetic run (a minute or two)...", flush=True)
        fit(load_config(overrides=SMALL_OVERRIDES), artifacts)
    serve.start(http_options={"host": "127.0.0.1", "port": _free_port()})
    serve.run(build_app({"artifacts": artifacts, "serve.topology": "colocated"}), name="ltray-docs-check",
              route_prefix=PREFIX, blocking=False)
    base = f"http://127.0.0.1:{_get_global_client().http_config.port}{PREFIX}"
    wait_ready(base)

    def stop():
        serve.shutdown()
        ray.shutdown()
    return base, stop


def wait_ready(base: str, timeout_s: float = 180) -> None:
    deadline = time.time() + timeout_s
    while True:
        try:
            if httpx.get(base + "/readyz", timeout=30).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.time() > deadline:
            raise TimeoutError(f"{base}/readyz not ready within {timeout_s} s")
        time.sleep(0.5)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="the app's URL (with its route prefix) on a server already running")
    ap.add_argument("--artifacts", help="a fitted run to serve (default: fit a small synthetic one)")
    ap.add_argument("--screenshot", metavar="PNG", help="also save a screenshot of /docs")
    args = ap.parse_args()
    chromium = find_chromium()
    with tempfile.TemporaryDirectory(prefix="ltray-docs-") as workdir:
        base, stop = (args.url.rstrip("/"), None) if args.url else serve_locally(args.artifacts, workdir)
        try:
            pages = check_pages(base)
            print(f"pages: {json.dumps(pages)}")
            if chromium is None:
                print(f"no Chromium found ({', '.join(CHROMIUM_NAMES)} or LTRAY_CHROMIUM): "
                      "install it with `apt-get install -y chromium`", file=sys.stderr)
                return 2
            found = check_browser(base, chromium)
            print(f"{chromium}: Swagger UI rendered {found['opblocks']} operation blocks "
                  f"{found['operations']}; ReDoc rendered every path")
            if args.screenshot:
                screenshot(chromium, base + "/docs", args.screenshot)
                print(f"screenshot of /docs: {args.screenshot}")
        finally:
            if stop is not None:
                stop()
    print("docs render offline: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
