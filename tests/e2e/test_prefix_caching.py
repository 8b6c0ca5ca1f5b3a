"""Prefix caching end to end: with `--num-shard 2` both ranks reuse the same blocks of a shared prefix, and
the greedy ids are those of `--prefix-caching false`."""

from __future__ import annotations

import json
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


def test_openai_usage_reports_the_cached_prompt_tokens(tiny_llama: Path) -> None:
    """OpenAI's usage.prompt_tokens_details.cached_tokens: what the prefix cache held of the prompt."""
    server = launch(tiny_llama, "--max-input-tokens", "256", "--max-total-tokens", "512")
    try:
        usages = []
        for stream in (False, False, True):
            body = {"prompt": LONG + "Hello world", "max_tokens": 4, "stream": stream,
                    "stream_options": {"include_usage": True} if stream else None}
            response = server.post("/v1/completions", body)
            assert response.status_code == 200, response.text
            if stream:
                events = [line[6:] for line in response.text.splitlines() if line.startswith("data: {")]
                usages.append(json.loads(events[-1])["usage"])
            else:
                usages.append(response.json()["usage"])
    finally:
        assert server.stop() == 0, server.log()
    cached = [u["prompt_tokens_details"]["cached_tokens"] for u in usages]
    assert cached[0] == 0
    # the repeats reuse every full block of the first (all but at least the prompt's last token)
    assert cached[1] == cached[2] == (usages[0]["prompt_tokens"] - 1) // 16 * 16 > 0, usages
