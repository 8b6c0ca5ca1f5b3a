"""The playground's routes in process (router/playground.py): GET / negotiation, the API key, package data.

The page itself is tested in a browser by tests/e2e/test_playground.py.
"""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from router import playground
from router.batcher import Batcher, SchedulerConfig
from router.config import RouterConfig
from router.openai_routes import OpenAIRoutes
from router.server import Router
from router.validation import Validator
from tests.router.fake_shard import FakeShard

ROOT = Path(__file__).resolve().parents[2]
HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
KEY = {"Authorization": "Bearer k"}


def _app(tokenizer_dir: Path, validator: Validator, *args: str) -> web.Application:
    config = RouterConfig.parse(["--tokenizer-dir", str(tokenizer_dir), "--model-id", "tiny-model", *args])
    batcher = Batcher(FakeShard(), SchedulerConfig(max_batch_prefill_tokens=100, max_batch_total_tokens=1000,
                                                   block_size=16))
    router = Router(config, validator, batcher, FakeShard(), 1000)  # type: ignore[arg-type]
    app = router.app()
    OpenAIRoutes(router, None).add_to(app)
    return app


async def _post_only_root() -> tuple[int, str | None, bytes]:
    """What GET / answered before the playground: aiohttp's 405 for a route that only has POST."""
    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.add_routes([web.post("/", handler)])
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/", headers={"Accept": "*/*"})
        return response.status, response.headers.get("Allow"), await response.read()


async def test_get_root_is_the_page_for_a_browser_and_a_405_otherwise(tokenizer_dir: Path,
                                                                         validator: Validator) -> None:
    before = await _post_only_root()
    async with TestClient(TestServer(_app(tokenizer_dir, validator))) as client:
        for path in ("/", "/playground"):
            page = await client.get(path, headers=HTML)
            assert page.status == 200 and page.content_type == "text/html"
            text = await page.text()
            assert 'data-api-key="optional"' in text and 'data-testid="prompt"' in text
            assert "connect-src 'self'" in page.headers["Content-Security-Policy"]
        for accept in ("*/*", "application/json", ""):
            other = await client.get("/", headers={"Accept": accept})
            assert (other.status, other.headers.get("Allow"), await other.read()) == before
        head = await client.head("/", headers={"Accept": "*/*"})
        assert (head.status, head.headers.get("Allow")) == (405, "POST")
        assert (await client.get("/playground/playground.js")).content_type == "text/javascript"
        assert (await client.get("/playground/playground.css")).content_type == "text/css"
        assert (await client.get("/playground/index.html")).status == 404  # only the listed assets
        assert (await client.get("/playground/../server.py")).status == 404


async def test_with_an_api_key_the_page_is_public_and_the_api_is_not(tokenizer_dir: Path,
                                                                      validator: Validator) -> None:
    async with TestClient(TestServer(_app(tokenizer_dir, validator, "--api-key", "k"))) as client:
        page = await client.get("/", headers=HTML)
        assert page.status == 200 and 'data-api-key="required"' in await page.text()
        assert (await client.get("/playground")).status == 200
        assert (await client.get("/playground/playground.js")).status == 200
        assert (await client.get("/", headers={"Accept": "*/*"})).status == 401  # as before: not a page
        assert (await client.get("/", headers={"Accept": "*/*", **KEY})).status == 405
        assert (await client.get("/playground/other.js")).status == 401
        for route in ("/", "/generate", "/generate_stream", "/v1/chat/completions"):
            assert (await client.post(route, json={"inputs": "hi"}, headers=HTML)).status == 401
        assert (await client.get("/info", headers=HTML)).status == 401
        assert (await client.get("/info", headers=KEY)).status == 200


def test_the_page_loads_only_its_own_files_and_calls_only_served_routes(tokenizer_dir: Path,
                                                                        validator: Validator) -> None:
    html = (playground.STATIC_DIR / "index.html").read_text()
    script = (playground.STATIC_DIR / "playground.js").read_text()
    loaded = re.findall(r'(?:src|href)="([^"#]+)"', html)
    assert sorted(loaded) == sorted("playground/" + name for name in playground.ASSETS)
    app = _app(tokenizer_dir, validator)
    served = {resource.canonical for resource in app.router.resources()}
    called = set(re.findall(r'fetch\("([^"]+)"', script))
    assert called == {"generate_stream", "generate", "v1/chat/completions", "info"}
    assert {"/" + route for route in called} <= served  # relative: works behind a path prefix too


@pytest.mark.parametrize("name", ["index.html", *playground.ASSETS])
def test_the_files_are_package_data(name: str) -> None:
    assert (playground.STATIC_DIR / name).is_file()
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["router"]
    assert any(fnmatch(f"{playground.STATIC_DIR.name}/{name}", pattern) for pattern in globs)


def _luminance(colour: str) -> float:
    channels = [int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_text_colours_keep_a_4_5_to_1_contrast_in_both_schemes() -> None:
    css = (playground.STATIC_DIR / "playground.css").read_text()
    schemes = [dict(re.findall(r"--([\w-]+): (#[0-9a-f]{6})", block)) for block in re.findall(r":root \{(.*?)\}", css,
                                                                                               re.S)]
    assert len(schemes) == 2  # light, and dark under prefers-color-scheme
    # (text, background) pairs the page uses; borders (--line) need 3:1
    pairs = [("fg", "bg"), ("muted", "bg"), ("fg", "panel"), ("muted", "panel"), ("accent-fg", "accent"),
             ("error-fg", "error-bg"), ("fg", "user"), ("muted", "user"), ("fg", "assistant"), ("focus", "bg")]
    for colours in schemes:
        for text, background in pairs + [("line", "bg")]:
            lighter, darker = sorted((_luminance(colours[text]), _luminance(colours[background])), reverse=True)
            ratio = (lighter + 0.05) / (darker + 0.05)
            assert ratio >= (3.0 if text == "line" else 4.5), (text, background, ratio)
