"""The browser playground: one page, served by the router itself at `GET /` (for a browser, i.e. an Accept
header with text/html) and at `GET /playground`, with its script and style sheet under `/playground/`.

The files are package data (`router/playground_static/`): no build step, no framework, nothing fetched from
another origin (the Content-Security-Policy below forbids it), so the page works offline. It speaks to the
server's own routes with relative URLs: `/generate_stream` and `/generate` side by side, and
`/v1/chat/completions` for chat. The page itself is public even with `--api-key` (it holds no secret; it asks
for the key and sends it as a bearer token); every route it calls still needs the key.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).with_name("playground_static")
# The page's assets (by name under /playground/) and their types; nothing else is served.
ASSETS = {"playground.js": "text/javascript", "playground.css": "text/css"}
PAGE_PATHS = frozenset({"/", "/playground"})
ASSET_PREFIX = "/playground/"
# Routes that serve the page, not the API: left out of /openapi.json (tests/router/test_openapi.py).
ROUTES = frozenset({("GET", "/"), ("GET", "/playground"), ("GET", "/playground/{name}")})
# Everything the page loads comes from the server itself; it may call only the server's own routes.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
API_KEY_MARKER = 'data-api-key="optional"'


def wants_html(request: web.BaseRequest) -> bool:
    """A browser navigating: its Accept header names text/html (curl's `*/*` does not)."""
    return "text/html" in request.headers.get("Accept", "").lower()


def is_public(request: web.BaseRequest) -> bool:
    """The page and its files, which a browser loads before the user can type an API key."""
    if request.method not in ("GET", "HEAD"):
        return False
    path = request.path
    if path == "/":
        return wants_html(request)
    return path == "/playground" or (path.startswith(ASSET_PREFIX) and path.removeprefix(ASSET_PREFIX) in ASSETS)


def _headers(content_type: str) -> dict[str, str]:
    return {"Content-Type": content_type, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer"}


def add_playground_routes(app: web.Application, api_key_required: bool) -> None:
    """GET / (negotiated), GET /playground and the page's two assets, read once from the package."""
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    if api_key_required:
        page = page.replace(API_KEY_MARKER, 'data-api-key="required"', 1)
    page_bytes = page.encode()
    assets = {name: (STATIC_DIR / name).read_bytes() for name in ASSETS}

    async def playground(request: web.Request) -> web.Response:
        return web.Response(body=page_bytes, headers=_headers("text/html; charset=utf-8"))

    async def root(request: web.Request) -> web.Response:
        # POST / is TGI's compat route; a GET that is not a browser's gets the 405 it always got.
        if not wants_html(request):
            raise web.HTTPMethodNotAllowed(request.method, ["POST"])
        return await playground(request)

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in assets:
            raise web.HTTPNotFound()
        return web.Response(body=assets[name], headers=_headers(f"{ASSETS[name]}; charset=utf-8"))

    app.add_routes([
        web.get("/", root),
        web.get("/playground", playground),
        web.get(ASSET_PREFIX + "{name}", asset),
    ])
