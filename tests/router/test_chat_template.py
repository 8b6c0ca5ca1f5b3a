"""Chat templates: loading from a model directory, rendering like transformers, sandboxing."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import tokenizers

from router.chat_template import ChatTemplate, TemplateError, flatten_content
from tests.model_factory import CHAT_TEMPLATE

# SmolLM2-Instruct's template: ChatML with a default system prompt when the chat has none.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SMOLLM2_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
CHAT = [
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello, how can I help?"},
    {"role": "user", "content": "What is 2+2?"},
]


def write_model_dir(path: Path, chat_template: Any = None, **config: Any) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if chat_template is not None:
        config["chat_template"] = chat_template
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def template_of(tmp_path: Path, source: str, **config: Any) -> ChatTemplate:
    loaded = ChatTemplate.load(write_model_dir(tmp_path / "model", source, **config))
    assert loaded is not None
    return loaded


def render_error(template: ChatTemplate, messages: list[dict[str, Any]] = CHAT, **kwargs: Any) -> str:
    with pytest.raises(TemplateError) as info:
        template.render(messages, **kwargs)
    assert info.value.error_type == "template_error"
    return info.value.message


def test_tiny_tokenizer_template(tokenizer_dir: Path, tokenizer: tokenizers.Tokenizer) -> None:
    template = ChatTemplate.load(tokenizer_dir)
    assert template is not None
    assert template.bos_token == "<|im_start|>" and template.eos_token == "<|im_end|>"
    prompt = template.render(CHAT)
    assert prompt == (
        "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello, how can I help?<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    # the markers are single special tokens for the tokenizer
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    assert ids.count(tokenizer.token_to_id("<|im_start|>")) == 4
    assert template.render(CHAT, add_generation_prompt=False).endswith("What is 2+2?<|im_end|>\n")


def test_smollm2_default_system_prompt(tmp_path: Path) -> None:
    template = template_of(tmp_path, SMOLLM2_TEMPLATE, bos_token="<|im_start|>", eos_token="<|im_end|>")
    assert template.render([{"role": "user", "content": "Hi"}]) == (
        SMOLLM2_SYSTEM + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    with_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert template.render(with_system, add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    )


def test_missing_template_is_none(tmp_path: Path) -> None:
    assert ChatTemplate.load(write_model_dir(tmp_path / "a", None, eos_token="</s>")) is None
    assert ChatTemplate.load(tmp_path / "empty") is None  # no tokenizer_config.json at all


def test_chat_template_jinja_file_wins(tmp_path: Path) -> None:
    model = write_model_dir(tmp_path / "m", "from config", bos_token={"content": "<s>", "lstrip": False})
    (model / "chat_template.jinja").write_text("{{ bos_token }}from file")
    template = ChatTemplate.load(model)
    assert template is not None and template.render(CHAT) == "<s>from file"


def test_named_templates(tmp_path: Path) -> None:
    named = [{"name": "default", "template": "plain"}, {"name": "tool_use", "template": "tools: {{ tools | length }}"}]
    template = template_of(tmp_path, named)  # type: ignore[arg-type]
    assert template.render(CHAT) == "plain"
    assert template.render(CHAT, tools=[{"type": "function"}]) == "tools: 1"
    only = template_of(tmp_path / "only", [{"name": "chatml", "template": "only one"}])  # type: ignore[arg-type]
    assert only.render(CHAT) == "only one"
    two = write_model_dir(tmp_path / "two", [{"name": "a", "template": "x"}, {"name": "b", "template": "y"}])
    with pytest.raises(ValueError, match="none is named 'default'"):
        ChatTemplate.load(two)


def test_broken_template_fails_at_load(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not compile"):
        ChatTemplate.load(write_model_dir(tmp_path / "m", "{% for m in messages %}"))


def test_missing_special_tokens_stay_undefined(tmp_path: Path) -> None:
    template = template_of(tmp_path, "[{{ bos_token }}]{% if eos_token is defined %}eos{% endif %}")
    assert template.render(CHAT) == "[]"


def test_raise_exception_message_reaches_the_client(tmp_path: Path) -> None:
    source = (
        "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{% endif %}{{ message['content'] }}{% endfor %}"
    )
    template = template_of(tmp_path, source)
    assert template.render(CHAT) == "Hi!Hello, how can I help?What is 2+2?"
    twice = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    assert render_error(template, twice) == "Conversation roles must alternate user/assistant/user/assistant/..."


def test_content_parts_are_joined(tmp_path: Path) -> None:
    template = template_of(tmp_path, CHAT_TEMPLATE)
    parts = [{"type": "text", "text": "Hello "}, {"type": "text", "text": "world"}]
    prompt = template.render([{"role": "user", "content": parts}], add_generation_prompt=False)
    assert prompt == "<|im_start|>user\nHello world<|im_end|>\n"
    image = [{"type": "image_url", "image_url": {"url": "http://x/cat.png"}}]
    assert "'image_url' are not supported" in render_error(template, [{"role": "user", "content": image}])
    assert "string `text`" in render_error(template, [{"role": "user", "content": [{"type": "text"}]}])
    assert "must be a string or a list" in render_error(template, [{"role": "user", "content": 3}])


def test_null_content_is_empty() -> None:
    assert flatten_content(None) == "" and flatten_content("x") == "x"


def test_tojson_keeps_non_ascii_and_html(tmp_path: Path) -> None:
    template = template_of(tmp_path, "{{ tools | tojson }}|{{ tools[0] | tojson(indent=2) }}")
    tools = [{"name": "météo", "description": "<b>東京</b> & more"}]
    compact, indented = template.render(CHAT, tools=tools).split("|")
    assert json.loads(compact) == tools
    assert "météo" in compact and "<b>東京</b> & more" in compact  # jinja's own tojson would escape these
    assert indented == json.dumps(tools[0], ensure_ascii=False, indent=2)


def test_strftime_now_and_extra_variables(tmp_path: Path) -> None:
    template = template_of(tmp_path, "{{ strftime_now('%Y') }} {{ enable_thinking }} {{ add_generation_prompt }}")
    assert template.render(CHAT, enable_thinking=False) == f"{datetime.now().year} False True"


def test_trim_blocks_and_loopcontrols(tmp_path: Path) -> None:
    source = (
        "{% for message in messages %}\n"
        "    {% if loop.index > 2 %}{% break %}{% endif %}\n"
        "    {% if message['role'] == 'assistant' %}{% continue %}{% endif %}\n"
        "{{ message['content'] }};\n"
        "{% endfor %}\n"
    )
    # block lines leave no newline or indentation behind; the middle message is skipped, the third never reached
    assert template_of(tmp_path, source).render(CHAT) == "Hi!;\n"


def test_sandbox_hides_internals(tmp_path: Path) -> None:
    # an unsafe attribute is an undefined value: printing it shows nothing, using it fails (below)
    template = template_of(tmp_path, "[{{ messages.__class__ }}{{ raise_exception.__globals__ }}]")
    assert template.render(CHAT) == "[]"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ raise_exception.__globals__['json'] }}",
        "{% set x = messages.append({'role': 'user'}) %}",  # immutable sandbox: no mutation of inputs
        "{% set ns = namespace(__class__=1) %}",
    ],
)
def test_sandbox_refuses_internals(tmp_path: Path, source: str) -> None:
    message = render_error(template_of(tmp_path, source))
    assert "unsafe" in message or "underscore" in message or "not safely callable" in message


def test_render_errors_are_template_errors(tmp_path: Path) -> None:
    message = render_error(template_of(tmp_path, "{{ messages[0]['content'] + 1 }}"))
    assert message.startswith("chat template failed to render:")
    assert "undefined" in render_error(template_of(tmp_path / "b", "{{ nope.field }}"))
    assert "a message must be an object" in render_error(template_of(tmp_path / "c", "x"), ["hi"])  # type: ignore[list-item]


def test_uses_tools(tmp_path: Path) -> None:
    assert template_of(tmp_path, "{% if tools %}{{ tools | tojson }}{% endif %}").uses_tools
    assert not template_of(tmp_path / "b", CHAT_TEMPLATE).uses_tools


def test_messages_are_not_modified(tmp_path: Path) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "a"}]}]
    template_of(tmp_path, CHAT_TEMPLATE).render(messages)
    assert messages == [{"role": "user", "content": [{"type": "text", "text": "a"}]}]


def test_tools_reach_the_template_or_follow_the_last_message(tmp_path: Path) -> None:
    from router.openai_routes import chat_prompt
    from router.openai_schemas import parse_chat_request
    from router.tool_grammar import resolve_tool_choice

    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
             {"type": "function", "function": {"name": "get_time"}}]
    history = [{"role": "user", "content": "Weather in Paris?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                     "arguments": '{"city": "Paris"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
               {"role": "user", "content": "And the time?"}]

    def prompt(template: ChatTemplate, tool_choice: Any) -> str:
        chat = parse_chat_request(json.dumps({"messages": history, "tools": tools, "tool_choice": tool_choice}))
        return chat_prompt(template, chat, resolve_tool_choice(chat.tools, chat.tool_choice, None))

    # A template that renders tools gets those that may be called (transformers passes `tools` the same way).
    aware = template_of(tmp_path, "{% for m in messages %}{{ m.role }}:{{ m.content }};{% endfor %}"
                                  "TOOLS={{ tools | map(attribute='function.name') | join(',') }}")
    assert prompt(aware, "auto").endswith(";TOOLS=get_weather,get_time")
    assert prompt(aware, {"type": "function", "function": {"name": "get_time"}}).endswith(";TOOLS=get_time")
    # One that does not: the list and the format follow the last message, as in TGI.
    plain = template_of(tmp_path / "plain", CHAT_TEMPLATE)
    text = prompt(plain, "required")
    assert "<|im_start|>tool\nsunny<|im_end|>" in text
    last = text.split("<|im_start|>user\n")[-1]
    assert last.startswith("And the time?\n\nYou can call these tools:\n") and '"get_time"' in last
    assert "If no tool fits" not in last and "If no tool fits" in prompt(plain, "auto")
    # tool_choice "none": no tools anywhere
    assert "get_weather\"" not in prompt(plain, "none").split("<|im_start|>user\n")[-1]
