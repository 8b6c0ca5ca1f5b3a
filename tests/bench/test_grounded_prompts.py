"""tgi-bench's input-grounded prompt set (--prompt-set grounded): tasks over shipped public-domain passages."""

from __future__ import annotations

import pytest

from bench.cli import build_parser
from bench.passages import PASSAGES, TASKS
from bench.prompts import _sentences, make_grounded_prompts, make_prompt_set, make_prompts


def test_grounded_prompts_are_a_task_around_the_start_of_a_passage_and_deterministic() -> None:
    prompts = make_grounded_prompts(40, 120, seed=3)
    assert prompts == make_grounded_prompts(40, 120, seed=3)
    assert prompts != make_grounded_prompts(40, 120, seed=4)
    for prompt in prompts:
        passage = next(text for _, text in PASSAGES if text[:40] in prompt.text)
        task = next(t for t in TASKS if all(part in prompt.text for part in t.split("{passage}")))
        body = prompt.text.removeprefix(task.split("{passage}")[0]).removesuffix(task.split("{passage}")[1])
        assert passage.startswith(body) and body.endswith((".", "!", "?", ";", '"'))
        assert prompt.approx_tokens <= 120 or body.count(". ") == 0
    assert len({p.text for p in prompts}) > 10


def test_a_long_target_takes_whole_passages_and_a_tiny_one_the_first_sentence() -> None:
    whole = make_grounded_prompts(8, 5000)
    assert any(text in p.text for p in whole for _, text in PASSAGES)
    firsts = {_sentences(text)[0] for _, text in PASSAGES}
    for prompt in make_grounded_prompts(8, 1):  # the first sentence alone, whatever its length
        assert any(first in prompt.text and text.removeprefix(first)[:30] not in prompt.text
                   for _, text in PASSAGES for first in firsts if text.startswith(first))


def test_the_prompt_set_flag_picks_the_set() -> None:
    assert build_parser().parse_args(["--target", "x=http://h:1"]).prompt_set == "generic"
    args = build_parser().parse_args(["--target", "x=http://h:1", "--prompt-set", "grounded"])
    assert make_prompt_set(args.prompt_set, 3, 64) == make_grounded_prompts(3, 64)
    assert make_prompt_set("generic", 3, 64) == make_prompts(3, 64)
    with pytest.raises(ValueError):
        make_prompt_set("poems", 3, 64)
