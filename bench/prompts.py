"""A deterministic, seeded set of prompts of varied lengths.

Every prompt is context sentences from a built-in corpus, in an order shuffled per prompt (so that
servers which cache prompt prefixes, such as llama.cpp's slots, cannot reuse one prompt's prefill
for the next), then a numbered question; the context grows until the prompt reaches its length.
Lengths are drawn uniformly from [0.5, 1.5] x `target_tokens`. Token counts are estimated (about
4/3 tokens per English word); the server's own count, where it reports one, is what the results
record.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

QUESTIONS = (
    "Explain how a transformer language model turns a prompt into its next token.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Describe the water cycle to a ten-year-old.",
    "What are the trade-offs between batch processing and stream processing?",
    "Summarize the causes and consequences of the Industrial Revolution.",
    "Give step-by-step instructions for baking a loaf of sourdough bread.",
    "Compare the planets Mars and Venus as places for a future human base.",
    "Explain why the sky is blue and sunsets are red.",
    "Write a product description for a solar-powered bicycle lamp.",
    "How does a hash table handle collisions? Give two strategies.",
    "Draft a polite email asking a colleague to review a pull request.",
    "What is the difference between weather and climate?",
    "Describe how vaccines train the immune system.",
    "Write a poem about the first snowfall in a quiet city.",
    "Explain the rules of chess to someone who has never played.",
    "List the main ideas behind continuous batching in inference servers.",
    "How do bees communicate the location of flowers to each other?",
    "Explain compound interest with a worked example.",
    "Describe a walk through a busy market in the early morning.",
    "What makes a good unit test? Give concrete advice.",
    "Explain how public-key cryptography lets strangers share a secret.",
    "Write a dialogue between a robot and a gardener about patience.",
    "Why do we have seasons on Earth?",
    "Describe the life cycle of a star like the Sun.",
)

CONTEXT = (
    "The museum opened its new wing last spring, and the crowds have not thinned since.",
    "A gentle rain fell over the harbour while the fishing boats waited for the tide.",
    "Engineers measured the bridge's vibrations at dawn, when traffic was lightest.",
    "The recipe calls for flour, water, salt and a great deal of patience.",
    "Most of the library's oldest maps were drawn by hand on thick linen paper.",
    "In the valley below, farmers rotate their crops to keep the soil healthy.",
    "The orchestra rehearsed the final movement three times before the concert.",
    "Satellites in low orbit circle the planet roughly every ninety minutes.",
    "Her notebook was full of sketches of birds, bridges and unfamiliar plants.",
    "A small team rewrote the scheduler so that short jobs never wait behind long ones.",
    "The old clock tower chimes on the hour, though it runs four minutes fast.",
    "Glaciers carve wide U-shaped valleys as they slowly grind their way downhill.",
    "The market sells spices from a dozen countries, each in its own wooden bin.",
    "Children at the school plant a tree every year on the first day of spring.",
    "Latency matters most to users when they are waiting for the very first word.",
    "The trail climbs steeply through pine forest before opening onto a ridge.",
    "A good editor removes every word that does not earn its place on the page.",
    "The ferry crosses the strait twice a day unless the wind is too strong.",
    "Copper wires carried the first telegraph messages across the continent.",
    "The bakery's ovens are lit at three in the morning, long before sunrise.",
    "Coral reefs shelter a quarter of all marine species in a tiny fraction of the ocean.",
    "The committee argued for an hour about the colour of the new signs.",
    "On clear nights the observatory opens its dome to visitors from the town.",
    "The river floods every few years, leaving rich silt across the plain.",
    "Every request in the queue carries its own deadline and its own budget of tokens.",
    "The chess club meets on Thursdays in the back room of the old café.",
    "Wind turbines along the coast turn slowly even on the calmest afternoons.",
    "The manuscript had been translated twice, each time losing a little of its humour.",
    "Honeybees visit thousands of flowers to gather enough nectar for a spoonful of honey.",
    "The city's first subway line was dug by hand more than a century ago.",
    "A careful cook tastes the sauce before adding more salt.",
    "The hikers shared their last orange at the summit and watched the clouds below.",
)

TOKENS_PER_WORD = 4 / 3


def estimate_tokens(text: str) -> int:
    """A rough token count for English text (about 4/3 tokens per word)."""
    return max(1, round(len(text.split()) * TOKENS_PER_WORD))


@dataclass(frozen=True)
class Prompt:
    text: str
    approx_tokens: int


def _check_sizes(count: int, target_tokens: int) -> None:
    if count <= 0:
        raise ValueError("count must be positive")
    if target_tokens <= 0:
        raise ValueError("target_tokens must be positive")


def make_prompts(count: int, target_tokens: int, seed: int = 0) -> list[Prompt]:
    """`count` prompts whose estimated lengths vary uniformly in [0.5, 1.5] x target_tokens.

    The same (count, target_tokens, seed) always gives the same prompts.
    """
    _check_sizes(count, target_tokens)
    rng = random.Random(seed)
    prompts = []
    for i in range(count):
        goal = max(1, round(target_tokens * rng.uniform(0.5, 1.5)))
        question = QUESTIONS[(i + rng.randrange(len(QUESTIONS))) % len(QUESTIONS)]
        words = question.split()
        context = list(CONTEXT)
        rng.shuffle(context)
        parts: list[str] = []
        j = 0
        # the question goes last, after its context, as "read this, then answer"
        while (len(words) + sum(len(p.split()) for p in parts)) * TOKENS_PER_WORD < goal - 4:
            parts.append(context[j % len(context)])
            j += 1
            if j % len(context) == 0:
                rng.shuffle(context)
        if parts:
            text = f"Context: {' '.join(parts)}\n\nQuestion {i + 1}: {question}"
        else:
            # too short a target for any context: the question alone, cut to roughly the goal
            keep = max(1, round(goal / TOKENS_PER_WORD))
            text = " ".join(words[:keep])
        prompts.append(Prompt(text=text, approx_tokens=estimate_tokens(text)))
    return prompts


# Prompt sets tgi-bench can run (--prompt-set): generic questions over shuffled context, or tasks grounded
# in a supplied passage (rewrite, summarise: the answer reuses the input's words).
PROMPT_SETS = ("generic", "grounded")


def _sentences(text: str) -> list[str]:
    """The passage cut after each sentence end (., !, ? or ; followed by a space), kept verbatim."""
    out: list[str] = []
    start = 0
    for i, char in enumerate(text):
        if char in ".!?;" and (i + 1 == len(text) or text[i + 1] == " "):
            out.append(text[start: i + 1].strip())
            start = i + 1
    if text[start:].strip():
        out.append(text[start:].strip())
    return out


def make_grounded_prompts(count: int, target_tokens: int, seed: int = 0) -> list[Prompt]:
    """`count` input-grounded prompts: a rewriting task (simpler words, spelling fixes, modern English,
    one sentence per line) over a public-domain passage (bench/passages.py), the passage cut to about
    `target_tokens` (whole sentences from its start, at least one, at most all of it). Passages and tasks
    are drawn with `seed`; the same arguments give the same prompts. The answers reuse the passage's
    words, the case n-gram speculation (--speculate) is for."""
    from bench.passages import PASSAGES, TASKS

    _check_sizes(count, target_tokens)
    rng = random.Random(seed)
    prompts = []
    for i in range(count):
        _, passage = PASSAGES[(i + rng.randrange(len(PASSAGES))) % len(PASSAGES)]
        task = TASKS[rng.randrange(len(TASKS))]
        kept: list[str] = []
        for sentence in _sentences(passage):
            if kept and estimate_tokens(task.format(passage=" ".join([*kept, sentence]))) > target_tokens:
                break
            kept.append(sentence)
        text = task.format(passage=" ".join(kept))
        prompts.append(Prompt(text=text, approx_tokens=estimate_tokens(text)))
    return prompts


def make_prompt_set(name: str, count: int, target_tokens: int, seed: int = 0) -> list[Prompt]:
    """The prompts of set `name` (one of PROMPT_SETS)."""
    if name == "generic":
        return make_prompts(count, target_tokens, seed)
    if name == "grounded":
        return make_grounded_prompts(count, target_tokens, seed)
    raise ValueError(f"unknown prompt set {name!r}: expected one of {', '.join(PROMPT_SETS)}")
