"""The model's chat template: messages -> prompt text, for `/v1/chat/completions`.

Templates are Jinja programs shipped with the model (tokenizer_config.json or chat_template.jinja),
written for transformers' `apply_chat_template`. We render them the way transformers does (the same
environment options and helpers, so templates from the Hub behave identically) inside a sandbox,
because a template is code we did not write. TGI renders them with minijinja and also passes
`bos_token`, `eos_token`, `add_generation_prompt` (always true), `tools` and the messages.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Name of the template used when a tokenizer_config.json holds several (transformers' convention).
DEFAULT_TEMPLATE_NAME = "default"
# transformers picks this named template instead of the default when tools are passed.
TOOL_USE_TEMPLATE_NAME = "tool_use"


class TemplateError(Exception):
    """The chat template refused the conversation or failed to render (HTTP 422, `template_error`)."""

    error_type = "template_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _raise_exception(message: object) -> None:
    # Templates call raise_exception("Conversation roles must alternate ...") to reject a chat; the
    # message is the whole story, so it reaches the client verbatim (TGI and transformers do the same).
    raise TemplateError(str(message))


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes <, >, & and ' as \u003c... for HTML; templates that print tool
    # schemas expect plain json.dumps output with non-ASCII kept, like transformers provides.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    # Llama 3.x templates put today's date in the system prompt.
    return datetime.now().strftime(fmt)


class _Namespace(jinja2.utils.Namespace):
    """`namespace()` that refuses underscore names, so a template cannot store dunders on it."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # self inside *args, like jinja's Namespace
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a namespace cannot hold the underscore name {name!r}")


def _environment() -> ImmutableSandboxedEnvironment:
    # trim_blocks/lstrip_blocks and loopcontrols: what transformers uses, and what templates on the
    # Hub are written against (without them ChatML templates gain stray newlines).
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["namespace"] = _Namespace
    return env


def flatten_content(content: object) -> str:
    """A message's content as one string: TGI joins the text of content parts with no separator.

    TGI turns an image part into markdown (`![](url)`) for vision models; this server serves text
    models only, so any non-text part is refused instead of silently becoming text."""
    if content is None:
        # an assistant turn that only carries tool_calls; templates concatenate content as a string
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise TemplateError(f"message content must be a string or a list of parts, got {type(content).__name__}")
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind != "text":
            raise TemplateError(f"content parts of type {kind!r} are not supported: this model takes text only")
        text = part.get("text")
        if not isinstance(text, str):
            raise TemplateError("a text content part needs a string `text`")
        texts.append(text)
    return "".join(texts)


def _special_token(config: Mapping[str, Any], key: str) -> str | None:
    # tokenizer_config.json stores a token as a string or as a serialised AddedToken {"content": ...}.
    value = config.get(key)
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _named_templates(raw: object, source: Path) -> dict[str, str]:
    if isinstance(raw, str):
        return {DEFAULT_TEMPLATE_NAME: raw}
    if isinstance(raw, list):
        named = {
            item["name"]: item["template"]
            for item in raw
            if isinstance(item, Mapping) and isinstance(item.get("name"), str) and isinstance(item.get("template"), str)
        }
        if DEFAULT_TEMPLATE_NAME in named:
            return named
        if len(named) == 1:
            return {DEFAULT_TEMPLATE_NAME: next(iter(named.values()))}
        raise ValueError(f"{source}: chat_template lists {sorted(named)} but none is named 'default'")
    raise ValueError(f"{source}: chat_template must be a string or a list of {{name, template}}")


class ChatTemplate:
    """A compiled chat template; `render` is safe to call from several threads."""

    def __init__(self, templates: Mapping[str, str], *, bos_token: str | None = None, eos_token: str | None = None):
        if DEFAULT_TEMPLATE_NAME not in templates:
            raise ValueError("a chat template named 'default' is required")
        env = _environment()
        self._compiled: dict[str, jinja2.Template] = {}
        for name, source in templates.items():
            try:
                self._compiled[name] = env.from_string(source)
            except jinja2.TemplateError as err:
                # a broken template is a deployment problem: fail at start, not on every request
                raise ValueError(f"chat template {name!r} does not compile: {err}") from err
        # Which variables the default template reads: TGI appends the tool list to the last message
        # itself when a template ignores `tools`.
        self.uses_tools = "tools" in jinja2.meta.find_undeclared_variables(env.parse(templates[DEFAULT_TEMPLATE_NAME]))
        self.bos_token = bos_token
        self.eos_token = eos_token

    @classmethod
    def load(cls, model_dir: Path) -> ChatTemplate | None:
        """The template of a model directory, or None when it ships none.

        `chat_template.jinja` (what recent transformers saves) wins over tokenizer_config.json's
        `chat_template`; the special tokens always come from tokenizer_config.json."""
        config_path = model_dir / "tokenizer_config.json"
        config: dict[str, Any] = {}
        if config_path.is_file():
            loaded = json.loads(config_path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                config = loaded
        jinja_path = model_dir / "chat_template.jinja"
        if jinja_path.is_file():
            templates = {DEFAULT_TEMPLATE_NAME: jinja_path.read_text(encoding="utf-8")}
        elif config.get("chat_template") is not None:
            templates = _named_templates(config["chat_template"], config_path)
        else:
            return None
        return cls(
            templates,
            bos_token=_special_token(config, "bos_token"),
            eos_token=_special_token(config, "eos_token"),
        )

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        **extra: Any,
    ) -> str:
        """The prompt for `messages`; content parts are joined into one string first.

        `extra` adds template variables (e.g. `enable_thinking`) and may override the defaults."""
        plain = []
        for message in messages:
            if not isinstance(message, Mapping):
                raise TemplateError(f"a message must be an object, got {type(message).__name__}")
            plain.append({**message, "content": flatten_content(message.get("content"))})
        template = self._compiled[DEFAULT_TEMPLATE_NAME]
        if tools and TOOL_USE_TEMPLATE_NAME in self._compiled:
            template = self._compiled[TOOL_USE_TEMPLATE_NAME]
        variables: dict[str, Any] = {"messages": plain, "add_generation_prompt": add_generation_prompt, "tools": tools}
        # A missing token stays undefined (renders as "", fails `is defined`) rather than "None".
        if self.bos_token is not None:
            variables["bos_token"] = self.bos_token
        if self.eos_token is not None:
            variables["eos_token"] = self.eos_token
        variables.update(extra)
        try:
            return template.render(variables)
        except TemplateError:
            raise
        except jinja2.exceptions.SecurityError as err:
            raise TemplateError(f"chat template refused an unsafe operation: {err}") from None
        except RecursionError:
            raise TemplateError("chat template failed to render: recursion too deep") from None
        except Exception as err:  # TypeError from `'a' + none`, UndefinedError, ... anything the template does
            raise TemplateError(f"chat template failed to render: {err}") from None
