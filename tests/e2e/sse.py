"""Reading Server-Sent Events the way a plain HTTP client sees them."""

from __future__ import annotations

import json
from collections.abc import Iterator

import requests


def events(response: requests.Response) -> Iterator[dict]:
    """Each `data:` payload as JSON, in arrival order (no [DONE] handling: native routes send none)."""
    # SSE is UTF-8 by definition; requests would guess Latin-1 from a charset-less content type.
    for raw in response.iter_lines():
        line = raw.decode("utf-8")
        if line.startswith("data:"):
            yield json.loads(line[len("data:"):])


def stream(url: str, body: dict, timeout: float = 120) -> list[dict]:
    with requests.post(url, json=body, stream=True, timeout=timeout) as response:
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("text/event-stream")
        return list(events(response))
