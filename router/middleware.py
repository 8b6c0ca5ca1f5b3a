"""HTTP middlewares: bearer-token auth (--api-key) and CORS (--cors-allow-origin)."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

from router.responses import error_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Probes must work without the key: orchestrators don't send one.
OPEN_PATHS = frozenset({"/health", "/live"})


def api_key_middleware(api_key: str):
    expected = f"Bearer {api_key}".encode()

    @web.middleware
    async def require_api_key(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS or request.method == "OPTIONS":
            return await handler(request)
        given = request.headers.get("Authorization", "").encode()
        # Constant time: a byte-by-byte compare would leak how much of the key matched.
        if not hmac.compare_digest(given, expected):
            return error_response(401, "Unauthorized", "unauthorized", headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return require_api_key


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
