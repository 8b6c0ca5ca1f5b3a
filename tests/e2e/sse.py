"""Reading Server-Sent Events the way a plain HTTP client sees them."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

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


def stream_then(url: str, body: dict, after_first: Callable[[], None], timeout: float = 60) -> tuple[list[dict], float]:
    """Stream `body`; call `after_first` once the first event is in; read on to the end.

    Returns every event and the seconds from `after_first` to the stream's end.
    """
    collected: list[dict] = []
    with requests.post(url, json=body, stream=True, timeout=timeout) as response:
        assert response.status_code == 200, response.text
        lines = response.iter_lines()
        for raw in lines:
            if raw.startswith(b"data:"):
                collected.append(json.loads(raw[5:]))
                break
        after_first()
        acted_at = time.monotonic()
        collected.extend(json.loads(raw[5:]) for raw in lines if raw.startswith(b"data:"))
    return collected, time.monotonic() - acted_at
