"""API docs pages (Swagger UI at /docs, ReDoc at /redoc) whose JS and CSS the app serves itself.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so on a cluster without internet /docs is a
blank page. The assets ship in the `fastapi-offline` package (Swagger UI 5, ReDoc 2, a favicon), a
dependency of ltray; this is FastAPI's recipe for self-hosting them: the app is built with
`docs_url=None, redoc_url=None`, the package's folder is mounted and the pages point at it.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
ASSETS_DIR = Path(str(files("fastapi_offline") / "static"))
SWAGGER_JS, SWAGGER_CSS, REDOC_JS, FAVICON = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js",
                                              "favicon.png")


def install_offline_docs(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Add /docs, its OAuth2 redirect, /redoc and the assets under /docs-assets to `app` (built with
    docs_url=None, redoc_url=None). Call it before `serve.ingress(app)`, which copies the app."""
    assert app.docs_url is None and app.redoc_url is None, "build the app with docs_url=None, redoc_url=None"
    openapi_url, oauth2_url = app.openapi_url, app.swagger_ui_oauth2_redirect_url
    assert openapi_url and oauth2_url
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")

    def root(request: Request) -> str:
        # Behind Serve's route_prefix (or a proxy's root_path) the URLs the browser fetches carry the prefix
        return request.scope.get("root_path", "").rstrip("/")

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        r = root(request)
        return get_swagger_ui_html(
            openapi_url=r + openapi_url, title=f"{app.title} - Swagger UI", oauth2_redirect_url=r + oauth2_url,
            swagger_js_url=f"{r}{ASSETS_URL}/{SWAGGER_JS}", swagger_css_url=f"{r}{ASSETS_URL}/{SWAGGER_CSS}",
            swagger_favicon_url=f"{r}{ASSETS_URL}/{FAVICON}", swagger_ui_parameters=app.swagger_ui_parameters)

    @app.get(oauth2_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(redoc_url, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        r = root(request)
        # with_google_fonts=False: the fonts are another download from outside; ReDoc falls back to local ones
        return get_redoc_html(openapi_url=r + openapi_url, title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{r}{ASSETS_URL}/{REDOC_JS}", redoc_favicon_url=f"{r}{ASSETS_URL}/{FAVICON}",
                              with_google_fonts=False)
