"""/docs and /redoc work without internet: their JS and CSS come from the app, over real Ray Serve.

The app runs under a route prefix, as behind `serve run ... route_prefix=/x`: the pages' asset URLs must
carry it. The browser check runs Chromium headless when one is installed (`apt-get install -y chromium`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import httpx
import pytest
from ports import free_port

APP = "ltray-docs-test"
PREFIX = "/docs-test"
_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_docs_offline.py"
_spec = importlib.util.spec_from_file_location("check_docs_offline", _SCRIPT)
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)


@pytest.fixture(scope="module")
def docs_base(ray_cluster, serve_artifacts) -> str:
    """The app (colocated: two replicas, the lighter topology) under PREFIX; its URL with the prefix."""
    from ray import serve
    from ray.serve.context import _get_global_client

    from deployments.app import build_app

    started_here = _get_global_client(raise_if_no_controller_running=False) is None
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})  # joins Serve if it already runs
    serve.run(build_app({"artifacts": serve_artifacts, "serve.topology": "colocated"}), name=APP,
              route_prefix=PREFIX, blocking=False)
    http = _get_global_client().http_config  # the port Serve really uses, if it was started before
    base = f"http://{http.host}:{http.port}{PREFIX}"
    check.wait_ready(base, timeout_s=180)
    yield base
    if started_here:  # test_serve.py (collected after this file) starts Serve on a port of its own
        serve.shutdown()
    else:
        serve.delete(APP)  # frees the replicas' CPUs for the other test files


def test_docs_pages_load_only_local_assets(docs_base):
    pages = check.check_pages(docs_base)  # every URL on this server under the prefix, 200, JS/CSS/PNG
    for page, urls in pages.items():
        assert all(u.startswith(PREFIX + "/") for u in urls), (page, urls)
    assert f"{PREFIX}/docs-assets/swagger-ui-bundle.js" in pages["/docs"]
    assert f"{PREFIX}/docs-assets/swagger-ui.css" in pages["/docs"]
    assert f"{PREFIX}/docs-assets/redoc.standalone.js" in pages["/redoc"]
    assert f"{PREFIX}/openapi.json" in pages["/docs"] and f"{PREFIX}/openapi.json" in pages["/redoc"]
    r = httpx.get(f"{docs_base}/docs/oauth2-redirect", timeout=30)  # Swagger UI's OAuth2 page, also local
    assert r.status_code == 200 and "oauth2" in r.text.lower()
    # the docs routes stay out of the API schema (schemathesis in test_serve.py fuzzes every schema route)
    paths = httpx.get(f"{docs_base}/openapi.json", timeout=30).json()["paths"]
    assert not [p for p in paths if p.startswith(("/docs", "/redoc"))], list(paths)


@pytest.mark.skipif(check.find_chromium() is None,
                    reason="no Chromium on PATH (or LTRAY_CHROMIUM): `apt-get install -y chromium` runs this check")
def test_chromium_renders_every_operation(docs_base):
    found = check.check_browser(docs_base, check.find_chromium())
    ops = found["operations"]
    assert ("post", "/recommend") in ops and ("post", "/search") in ops
    assert found["opblocks"] == len(check.schema_operations(docs_base)) == 5
