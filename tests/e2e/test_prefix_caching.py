"""Prefix caching end to end: with `--num-shard 2` both ranks reuse the same blocks of a shared prefix, and
the greedy ids are those of `--prefix-caching false`."""

from __future__ import annotations

import re
from pathlib import Path

from tests.e2e.server import launch

LONG = "The quick brown fox jumps over the lazy dog. " * 12
PROMPTS = [LONG + "Hello world", LONG + "東京は日本の", LONG + "Hello world"]
REUSED = re.compile(r"prefill batch=\d+ .* reused=(\d+)")


def run(tiny_llama: Path, *flags: str) -> tuple[list[list[int]], list[int], str]:
    """Greedy ids per prompt (sent one after another), the reused counts of every rank's prefill steps
    that reused any, and the log."""
    # DEBUG: every step's line, not one per 5 s.
    server = launch(tiny_llama, "--num-shard", "2", "--max-input-tokens", "256", "--max-total-tokens", "512",
                    *flags, env={"LOG_LEVEL": "DEBUG"})
    try:
        ids = []
        for prompt in PROMPTS:
            response = server.post("/generate", {"inputs": prompt, "parameters": {"max_new_tokens": 12,
                                                                                  "details": True}})
            assert response.status_code == 200, response.text
            ids.append([t["id"] for t in response.json()["details"]["tokens"]])
        log = "".join(server.output)
    finally:
        assert server.stop() == 0, server.log()
    reused = [int(n) for n in REUSED.findall(log) if int(n)]
    return ids, reused, log


def test_two_shards_reuse_a_shared_prefix_and_keep_the_greedy_ids(tiny_llama: Path) -> None:
    off_ids, off_reused, off_log = run(tiny_llama, "--prefix-caching", "false")
    on_ids, on_reused, on_log = run(tiny_llama)
    print(f"prompt tokens reused per prefill step (2 ranks): {on_reused}")
    assert on_ids == off_ids
    assert off_reused == [] and off_log.count("prefix caching off") == 2
    assert on_log.count("prefix caching on") == 2
    # The second and third prompts reuse the first's full blocks, on each of the two ranks alike.
    assert len(on_reused) == 4 and min(on_reused) >= 64 and all(n % 16 == 0 for n in on_reused), on_reused
