"""HTTP middlewares: bearer-token auth (--api-key) and CORS (--cors-allow-origin)."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

from router.playground import is_public
from router.responses import error_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Probes must work without the key: orchestrators don't send one.
OPEN_PATHS = frozenset({"/health", "/live"})


def api_key_middleware(api_key: str):
    expected = f"Bearer {api_key}".encode()

    @web.middleware
    async def require_api_key(request: web.Request, handler: Handler) -> web.StreamResponse:
        # The playground page loads without the key (it asks for it); the routes it calls need it.
        if request.path in OPEN_PATHS or request.method == "OPTIONS" or is_public(request):
            return await handler(request)
        given = request.headers.get("Authorization", "").encode()
        # Constant time: a byte-by-byte compare would leak how much of the key matched.
        if not hmac.compare_digest(given, expected):
            return error_response(401, "Unauthorized", "unauthorized", headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return require_api_key


# Why not aiohttp-cors (0.8.1, tried in process against tests/e2e/test_production.py's CORS test): it falls
# short on
# - the preflight status: it answers 200, where the test (like TGI's tower-http CorsLayer, and we) expects
#   204 No Content;
# - `Vary: Origin`: it echoes the request's Origin in Access-Control-Allow-Origin (also when "*" is
#   configured) and sends no Vary, so a shared cache may hand one origin's answer to another; we send
#   Vary: Origin on preflights and responses;
# - coverage: CORS applies only to routes registered one by one with `cors.add(route)` (a preflight of any
#   other path is a 404); the OpenAI and OpenAPI routes join the app after Router.app(), and a route added
#   without it silently has no CORS, where this middleware covers every route at once.
# It does reach streams (its headers go on in on_response_prepare, as ours do) and refuses a preflight from
# an origin that is not allowed with 403, as we do.
def cors_middleware(allowed_origins: list[str]):
    """Answers CORS preflight requests; cors_on_prepare adds the headers to real responses."""
    allow_any = "*" in allowed_origins

    def allowed(origin: str | None) -> str | None:
        if origin is None:
            return None
        if allow_any:
            return "*"
        return origin if origin in allowed_origins else None

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = allowed(request.headers.get("Origin"))
        if request.method == "OPTIONS" and request.headers.get("Access-Control-Request-Method"):
            if origin is None:
                return web.Response(status=403)
            return web.Response(status=204, headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": request.headers.get("Access-Control-Request-Headers", "*"),
                "Access-Control-Max-Age": "600",
                "Vary": "Origin",
            })
        return await handler(request)

    return cors


def cors_on_prepare(allowed_origins: list[str]):
    """Adds the CORS headers as a response is prepared: this also reaches SSE streams, whose headers
    are sent from inside the handler before any middleware sees the response."""
    allow_any = "*" in allowed_origins

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin is None or not (allow_any or origin in allowed_origins):
            return
        response.headers["Access-Control-Allow-Origin"] = "*" if allow_any else origin
        response.headers["Vary"] = "Origin"

    return add_headers
