"""The routes that publish the OpenAPI document: `GET /openapi.json`, and `GET /docs` rendered with
Swagger UI, whose static files come from the `swagger-ui-bundle-v2` package (imported as
`swagger_ui_bundle`), so the page works offline. Without that package `/docs` falls back to a plain HTML
list of the routes.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from aiohttp import web

# Static files of Swagger UI that /docs needs, with their types; nothing else in the package is served.
DOCS_ASSETS = {"swagger-ui.css": "text/css", "swagger-ui-bundle.js": "text/javascript",
               "favicon-32x32.png": "image/png", "favicon-16x16.png": "image/png"}


def _swagger_ui_dir() -> Path | None:
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    path = Path(str(swagger_ui_path))
    return path if all((path / name).is_file() for name in DOCS_ASSETS) else None


SWAGGER_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="stylesheet" href="docs/static/swagger-ui.css">
<link rel="icon" type="image/png" href="docs/static/favicon-32x32.png" sizes="32x32">
<link rel="icon" type="image/png" href="docs/static/favicon-16x16.png" sizes="16x16">
</head>
<body>
<div id="swagger-ui"></div>
<noscript>{routes}</noscript>
<script src="docs/static/swagger-ui-bundle.js" charset="utf-8"></script>
<script>
window.onload = function () {{
  window.ui = SwaggerUIBundle({{url: "openapi.json", dom_id: "#swagger-ui", deepLinking: true,
                               presets: [SwaggerUIBundle.presets.apis], layout: "BaseLayout"}});
}};
</script>
</body>
</html>
"""

PLAIN_PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}code{{font-weight:bold}}</style></head>
<body>
<h1>{title}</h1>
<p>The full description is the OpenAPI document at <a href="openapi.json">/openapi.json</a>.</p>
{routes}
</body>
</html>
"""


def _route_list(spec: dict[str, Any]) -> str:
    items = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            items.append(f"<li><code>{html.escape(method.upper())} {html.escape(path)}</code> "
                         f"{html.escape(operation.get('summary', ''))}</li>")
    return "<ul>" + "".join(items) + "</ul>"


def docs_page(spec: dict[str, Any], swagger_ui: bool) -> str:
    """The /docs HTML: Swagger UI when its files are installed, else a plain list of the routes."""
    title = html.escape(f"{spec['info']['title']} {spec['info']['version']} API")
    return (SWAGGER_PAGE if swagger_ui else PLAIN_PAGE).format(title=title, routes=_route_list(spec))


def add_openapi_routes(app: web.Application, spec: dict[str, Any]) -> None:
    """GET /openapi.json, GET /docs and (when Swagger UI is installed) GET /docs/static/{name}."""
    document = json.dumps(spec, ensure_ascii=False).encode()
    assets = _swagger_ui_dir()
    page = docs_page(spec, swagger_ui=assets is not None)

    async def openapi_json(request: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    async def docs(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    routes = [web.get("/openapi.json", openapi_json), web.get("/docs", docs)]
    if assets is not None:
        async def static(request: web.Request) -> web.StreamResponse:
            name = request.match_info["name"]
            if name not in DOCS_ASSETS:  # an allow-list: nothing else of the package is reachable
                raise web.HTTPNotFound()
            return web.FileResponse(assets / name, headers={"Content-Type": DOCS_ASSETS[name],
                                                            "Cache-Control": "public, max-age=86400"})

        routes.append(web.get("/docs/static/{name}", static))
    app.add_routes(routes)
