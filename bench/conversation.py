"""The multi-turn scenario (`--scenario multi-turn`): N conversations at once, each of T turns in a row.

Every conversation opens with the same system prompt (about --system-prompt-tokens tokens: the same for
every conversation and every target), and each turn sends the whole history so far (the system prompt,
every earlier user message and the answer the server actually gave to it) plus a new user message (about
--prompt-tokens tokens; none is repeated). A server that reuses the KV cache of a prompt prefix it has
seen computes only the new tail of each turn; one that does not computes the whole history again, so its
time to first token grows with the turn. Every turn asks for --output-tokens tokens (ignore_eos, as every
tgi-bench request does).

How the history reaches the server:
- `openai-chat`: `messages`: system, then user and assistant alternating; the server applies its own chat
  template.
- `tgi`, `openai-completions`: one text, rendered here: ChatML with --prompt-template chatml, else a
  plain "System: / User: / Assistant:" transcript. Either way a turn's prompt is, character for
  character, the start of the next turn's.

Conversations run closed-loop and are not held in step: each sends its next turn as soon as its previous
answer ended; a conversation whose turn failed ends there (its history cannot go on without the answer).
Before they start, --warmup requests (the system prompt and a user message of no conversation) are sent one
after another and not recorded, so that the shared system prompt is one the server has seen, as a deployed
server would have.

Results: one level per turn (1..T: TTFT, ITL, ... of that turn's N requests; throughput over that turn's
own span, its first request sent to its last answer ended) and one for all turns (turn 0: throughput over
the whole run).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from bench.apis import GenerationSettings, Target, build_body
from bench.prompts import CONTEXT, TOKENS_PER_WORD, estimate_tokens, make_prompts
from bench.runner import RunConfig, TargetRunner, for_each_target
from bench.stats import LevelStats, RequestResult, aggregate

SYSTEM_OPENING = (
    "You are a helpful assistant for a magazine about travel, science and everyday life. The reference "
    "notes below are shared with every reader's conversation; use them when they help, answer in plain "
    "prose, and keep each answer short.\n\nReference notes:"
)

# (user message, the server's answer to it)
Exchange = tuple[str, str]


def make_system_prompt(target_tokens: int, seed: int = 0) -> str:
    """The shared system prompt: an opening, then reference sentences until about `target_tokens`."""
    rng = random.Random(f"system-prompt-{seed}")
    context = list(CONTEXT)
    rng.shuffle(context)
    parts = [SYSTEM_OPENING]
    words = len(SYSTEM_OPENING.split())
    while words * TOKENS_PER_WORD < target_tokens:  # estimate_tokens of the whole, kept up to date
        sentence = context[(len(parts) - 1) % len(context)]
        parts.append(sentence)
        words += len(sentence.split())
    return " ".join(parts)


def chat_messages(system: str, history: list[Exchange], user: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}]
    for asked, answered in history:
        messages += [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}]
    messages.append({"role": "user", "content": user})
    return messages


def render(system: str, history: list[Exchange], user: str, template: str) -> str:
    """The conversation as one prompt for the raw-text APIs, ending where the assistant's answer starts."""
    if template == "chatml":
        turns = [f"<|im_start|>system\n{system}<|im_end|>\n"]
        for asked, answered in history:
            turns.append(f"<|im_start|>user\n{asked}<|im_end|>\n<|im_start|>assistant\n{answered}<|im_end|>\n")
        turns.append(f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
        return "".join(turns)
    # the answer follows "Assistant:" directly, as it was generated after it
    turns = [f"System: {system}\n\n"]
    for asked, answered in history:
        turns.append(f"User: {asked}\n\nAssistant:{answered}\n\n")
    turns.append(f"User: {user}\n\nAssistant:")
    return "".join(turns)


def turn_body(target: Target, settings: GenerationSettings, ignore_eos: bool, system: str,
              history: list[Exchange], user: str) -> dict[str, Any]:
    """The request body of one turn: the history so far and the new user message."""
    if target.api == "openai-chat":
        body = build_body(target, user, settings, ignore_eos)
        body["messages"] = chat_messages(system, history, user)
        return body
    text = render(system, history, user, settings.prompt_template)
    return build_body(target, text, dataclasses.replace(settings, prompt_template="none"), ignore_eos)


@dataclass(frozen=True)
class MultiTurn:
    conversations: int
    turns: int
    system_prompt: str
    # conversation c's user message at turn t (from 0) is user_messages[c * turns + t]
    user_messages: list[str]
    warmup_messages: list[str]

    @classmethod
    def build(cls, conversations: int, turns: int, system_prompt_tokens: int, user_tokens: int, warmup: int,
              seed: int = 0) -> MultiTurn:
        """The same (arguments, seed) always give the same conversations."""
        count = conversations * turns
        # a seed of their own: the probe's prompts (the run's prompt list) are not these
        messages = [p.text for p in make_prompts(count + max(warmup, 0), user_tokens, seed + 7919)]
        return cls(conversations, turns, make_system_prompt(system_prompt_tokens, seed), messages[:count],
                   messages[count:])

    def describe(self) -> dict[str, Any]:
        return {"name": "multi-turn", "conversations": self.conversations, "turns": self.turns,
                "system_prompt_tokens_estimated": estimate_tokens(self.system_prompt),
                "warmup_requests": len(self.warmup_messages)}


def turn_levels(target: str, spec: MultiTurn, by_turn: list[list[RequestResult]], wall_start: float,
                wall_end: float, config: RunConfig) -> list[LevelStats]:
    """One level per turn (its own span), then all turns together (turn 0, the whole run's span)."""
    expected = config.settings.output_tokens
    # (turn, its requests, span start and end: None for the span of the requests themselves)
    groups: list[tuple[int, list[RequestResult], float | None, float | None]] = [
        (turn, results, None, None) for turn, results in enumerate(by_turn, start=1)]
    groups.append((0, [r for results in by_turn for r in results], wall_start, wall_end))
    levels = []
    for turn, results, start, end in groups:
        stats = aggregate(target, spec.conversations, results, start, end, expected_tokens=expected)
        stats.turn = turn
        if config.save_requests:
            stats.request_records = [r.record(wall_start) for r in sorted(results, key=lambda r: r.start)]
        levels.append(stats)
    return levels


async def run_conversations(runner: TargetRunner, spec: MultiTurn) -> list[LevelStats]:
    target, config = runner.target, runner.config
    settings, system = config.settings, spec.system_prompt
    for message in spec.warmup_messages:
        await runner.send(turn_body(target, settings, target.send_ignore_eos, system, [], message))
    by_turn: list[list[RequestResult]] = [[] for _ in range(spec.turns)]
    bar = tqdm(total=spec.conversations * spec.turns, desc=f"{target.name} {spec.conversations} conversations",
               unit="turn", disable=not config.progress, leave=True, dynamic_ncols=True)

    async def converse(number: int) -> None:
        history: list[Exchange] = []
        for turn in range(spec.turns):
            user = spec.user_messages[number * spec.turns + turn]
            result = await runner.send(turn_body(target, settings, target.send_ignore_eos, system, history, user))
            by_turn[turn].append(result)
            bar.update(1)
            if not result.ok:
                return
            history.append((user, result.text))

    wall_start = time.perf_counter()
    try:
        await asyncio.gather(*(converse(n) for n in range(spec.conversations)))
    finally:
        bar.close()
    wall_end = max((r.end for results in by_turn for r in results), default=time.perf_counter())
    return turn_levels(target.name, spec, by_turn, wall_start, wall_end, config)


async def run_multi_turn(targets: list[Target], config: RunConfig, spec: MultiTurn) -> list[LevelStats]:
    """The conversations against every target in turn; the levels of each, per turn and all together."""
    return await for_each_target(targets, config, lambda runner: run_conversations(runner, spec))
