"""OpenAI request models: parsing, clear errors, and the mapping onto native parameters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from router.chat_template import ChatTemplate
from router.openai_schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    parse_chat_request,
    parse_completion_request,
)
from router.schemas import GenerateRequest
from router.types import ValidRequest
from router.validation import ValidationError, Validator

USER = [{"role": "user", "content": "Hello world"}]


def chat(**fields: Any) -> ChatCompletionRequest:
    return parse_chat_request(json.dumps({"messages": USER, **fields}))


def chat_error(body: dict[str, Any] | str) -> str:
    with pytest.raises(ValidationError) as info:
        parse_chat_request(body if isinstance(body, str) else json.dumps(body))
    return info.value.message


def completion(**fields: Any) -> CompletionRequest:
    return parse_completion_request(json.dumps({"prompt": "Hello world", **fields}))


def completion_error(**fields: Any) -> str:
    with pytest.raises(ValidationError) as info:
        parse_completion_request(json.dumps({"prompt": "Hello world", **fields}))
    return info.value.message


def validate(validator: Validator, request: ChatCompletionRequest | CompletionRequest) -> ValidRequest:
    native = GenerateRequest(inputs="Hello world", parameters=request.to_generate_parameters())
    return validator.validate(native, stream=request.stream)


def validation_message(validator: Validator, request: ChatCompletionRequest | CompletionRequest) -> str:
    with pytest.raises(ValidationError) as info:
        validate(validator, request)
    return info.value.message


def test_openai_sdk_payload() -> None:
    # what openai.chat.completions.create(...) sends: NotGiven fields are simply absent
    request = chat(
        model="HuggingFaceTB/SmolLM2-135M-Instruct",
        messages=[{"role": "system", "content": "Be brief."}, *USER],
        max_tokens=20,
        temperature=0.7,
        top_p=0.9,
        seed=42,
        stop=["\n\n"],
        stream=True,
        stream_options={"include_usage": True},
        frequency_penalty=0.1,
        presence_penalty=0.2,
        user="someone",
        unknown_future_field={"x": 1},
    )
    assert request.stream and request.include_usage and request.n is None
    params = request.to_generate_parameters()
    assert params.max_new_tokens == 20 and params.temperature == 0.7 and params.top_p == 0.9
    assert params.do_sample and params.seed == 42 and params.stop == ["\n\n"] and params.details
    assert params.frequency_penalty == 0.1 and params.presence_penalty == 0.2
    assert params.top_n_tokens is None and params.grammar is None


def test_huggingface_hub_payload_and_nulls() -> None:
    # InferenceClient.chat_completion says model "tgi" and may carry TGI's tool_prompt; some clients send nulls
    nulls = dict.fromkeys(["max_tokens", "temperature", "top_p", "seed", "stop", "n", "logprobs", "logit_bias"])
    request = chat(model="tgi", tool_prompt="", stream=None, stream_options=None, **nulls)
    assert request.stream is False and not request.include_usage
    params = request.to_generate_parameters()
    assert params.max_new_tokens is None and params.stop == [] and params.temperature is None
    assert not chat(stream_options={"include_usage": None}).include_usage


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": "hi"}, "`messages`: Input should be a valid list"),
        ({}, "`messages`: Field required"),
        ({"messages": []}, "`messages`: must contain at least one message"),
        ({"messages": [{"content": "x"}]}, "`messages.0.role`: Field required"),
        ({"messages": [{"role": "user", "content": 5}]}, "`messages.0.content`: must be a string, a list"),
        ({"messages": [{"role": "user"}]}, "`messages.0`: a message needs `content`"),
        ({"messages": USER, "temperature": "0.5"}, "`temperature`: Input should be a valid number"),
        ({"messages": USER, "max_tokens": "10"}, "`max_tokens`: Input should be a valid integer"),
        ({"messages": USER, "stream": "yes"}, "`stream`: Input should be a valid boolean"),
        ({"messages": USER, "seed": -1}, "`seed`: Input should be greater than or equal to 0"),
        ({"messages": USER, "stop": 3}, "`stop`: must be a string or a list of strings"),
        ({"messages": USER, "stop": ["a", 1]}, "`stop`: must be a string or a list of strings"),
        ({"messages": USER, "logprobs": 1}, "`logprobs`: Input should be a valid boolean"),
        ({"messages": USER, "top_logprobs": 21}, "`top_logprobs`: Input should be less than or equal to 20"),
        ({"messages": USER, "stream_options": {"include_usage": "y"}}, "`stream_options.include_usage`: Input"),
        ({"messages": USER, "response_format": {"type": "xml"}}, "`response_format`: `type` must be one of"),
        (
            {"messages": USER, "response_format": {"type": "json_schema"}},
            "`response_format`: `json_schema.schema` must",
        ),
    ],
)
def test_wrong_types_name_the_field(body: dict[str, Any], message: str) -> None:
    assert chat_error(body).startswith(message)


def test_body_must_be_json_object() -> None:
    assert chat_error("{not json").startswith("request body is not valid JSON")
    assert chat_error("[]") == "request body must be a JSON object, got list"
    assert chat_error('{"messages": [], "temperature": NaN}').startswith("request body is not valid JSON")


@pytest.mark.parametrize("n", [0, 2, -1])
def test_only_one_choice(n: int) -> None:
    assert chat_error({"messages": USER, "n": n}) == f"`n`: only 1 is supported (one choice per request). Given: {n}"
    assert completion_error(n=n).startswith("`n`: only 1 is supported")


def test_n_one_is_fine() -> None:
    assert chat(n=1).n == 1 and completion(n=1).n == 1


def test_logit_bias() -> None:
    assert chat(logit_bias={}).logit_bias == {}
    assert chat_error({"messages": USER, "logit_bias": {"50256": -100}}) == (
        "`logit_bias`: not supported by this server yet"
    )


@pytest.mark.parametrize(("stop", "expected"), [("\n", ["\n"]), (["a", "b"], ["a", "b"]), (None, []), ([], [])])
def test_stop_string_or_list(stop: Any, expected: list[str]) -> None:
    assert chat(stop=stop).to_generate_parameters().stop == expected
    assert completion(stop=stop).to_generate_parameters().stop == expected


def test_temperature_zero_is_greedy(validator: Validator) -> None:
    params = chat(temperature=0, top_p=0.9, seed=3).to_generate_parameters()
    assert not params.do_sample and params.temperature is None and params.top_p is None
    sampling = validate(validator, chat(temperature=0.0, top_p=0.9)).sampling
    assert not sampling.do_sample and sampling.seed is None and sampling.temperature == 1.0


def test_no_temperature_samples_like_tgi(validator: Validator) -> None:
    # TGI: anything but temperature 0 samples, including an absent temperature (OpenAI's default is 1)
    sampling = validate(validator, chat()).sampling
    assert sampling.do_sample and sampling.temperature == 1.0 and sampling.seed is not None
    sampling = validate(validator, chat(temperature=0.5, seed=7)).sampling
    assert sampling.do_sample and sampling.temperature == 0.5 and sampling.seed == 7


def test_negative_temperature_is_refused_by_the_validator(validator: Validator) -> None:
    assert validation_message(validator, chat(temperature=-1)) == "`temperature` must be strictly positive"


def test_top_p_one_is_off(validator: Validator) -> None:
    assert chat(top_p=1).to_generate_parameters().top_p is None
    assert validate(validator, chat(top_p=1.0)).sampling.top_p == 1.0
    assert validate(validator, chat(top_p=0.5)).sampling.top_p == 0.5
    # checked at parsing, greedy or not (temperature 0 drops top_p before the validator sees it)
    for top_p, temperature in ((1.5, None), (0, None), (7, 0), (-1, 0)):
        assert chat_error({"messages": USER, "top_p": top_p, "temperature": temperature}) == (
            "`top_p`: must be > 0.0 and <= 1.0")


def test_logprobs_mapping(validator: Validator) -> None:
    assert chat(logprobs=True, top_logprobs=2).to_generate_parameters().top_n_tokens == 2
    assert chat(logprobs=True).to_generate_parameters().top_n_tokens is None
    # alternatives without logprobs would be thrown away: not computed
    assert chat(logprobs=False, top_logprobs=2).to_generate_parameters().top_n_tokens is None
    assert validate(validator, chat(logprobs=True, top_logprobs=3)).top_n_tokens == 3
    # OpenAI allows 20; the server's --max-top-n-tokens (5 here) is the validator's to enforce
    assert validation_message(validator, chat(logprobs=True, top_logprobs=10)) == (
        "`top_n_tokens` must be >= 0 and <= 5. Given: 10"
    )


def test_presence_penalty_reaches_sampling(validator: Validator) -> None:
    valid = validate(validator, chat(presence_penalty=0.75, frequency_penalty=-0.25))
    assert valid.sampling.presence_penalty == 0.75 and valid.sampling.frequency_penalty == -0.25
    assert validate(validator, chat()).sampling.presence_penalty == 0.0
    assert validation_message(validator, chat(presence_penalty=2.5)) == "`presence_penalty` must be >= -2.0 and <= 2.0"
    assert validate(validator, completion(presence_penalty=-1.5)).sampling.presence_penalty == -1.5


def test_max_tokens(validator: Validator) -> None:
    assert chat(max_tokens=5).to_generate_parameters().max_new_tokens == 5
    assert chat(max_tokens=5, max_completion_tokens=7).to_generate_parameters().max_new_tokens == 7
    assert chat(max_completion_tokens=9).to_generate_parameters().max_new_tokens == 9
    assert validate(validator, chat(max_tokens=4)).stopping.max_new_tokens == 4
    assert validation_message(validator, chat(max_tokens=0)) == "`max_new_tokens` must be strictly positive"


def test_response_format_becomes_a_grammar(validator: Validator) -> None:
    assert chat(response_format={"type": "text"}).to_generate_parameters().grammar is None
    grammar = chat(response_format={"type": "json_object"}).to_generate_parameters().grammar
    assert grammar is not None and grammar.type == "json" and grammar.value == {"type": "object"}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    json_schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    grammar = chat(response_format=json_schema).to_generate_parameters().grammar
    assert grammar is not None and grammar.value == {"schema": schema, "strict": False}
    tgi_form = {"type": "json_schema", "value": {"schema": schema, "strict": True}}
    grammar = chat(response_format=tgi_form).to_generate_parameters().grammar
    assert grammar is not None and grammar.value == {"schema": schema, "strict": True}
    grammar = chat(response_format={"type": "regex", "value": "[0-9]+"}).to_generate_parameters().grammar
    assert grammar is not None and grammar.type == "regex"
    assert chat_error({"messages": USER, "response_format": {"type": "regex", "value": 1}}).endswith("string `value`")
    assert chat_error({"messages": USER, "response_format": {"type": "json_schema"}}).endswith(
        "`json_schema.schema` must be a JSON schema object")
    # tools are a grammar of their own
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert chat_error({"messages": USER, "tools": tools, "response_format": {"type": "json_object"}}).endswith(
        "`response_format` and `tools` cannot be used together")
    chat(tools=tools, tool_choice="none", response_format={"type": "json_object"})  # no tool may be called
    assert validation_message(validator, chat(response_format={"type": "regex", "value": "[a-"})).startswith(
        "invalid grammar: ")


def test_chat_messages_for_the_template() -> None:
    tool_call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    request = chat(
        messages=[
            {"role": "system", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
            {"role": "user", "content": "Hi", "name": "ann"},
            {"role": "assistant", "content": None, "tool_calls": [tool_call]},
            {"role": "tool", "content": "42", "tool_call_id": "c1"},
        ],
        tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        tool_choice="auto",
    )
    assert request.chat_messages() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi", "name": "ann"},
        {"role": "assistant", "content": "", "tool_calls": [tool_call]},
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
    ]


def test_non_text_parts_are_refused() -> None:
    image = {"type": "image_url", "image_url": {"url": "http://x/cat.png"}}
    message = chat_error({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, image]}]})
    assert message == (
        "`messages.0.content`: part 1 has type 'image_url': only text parts are supported (this model takes text only)"
    )


def test_rendered_chat_validates(tokenizer_dir: Path, validator: Validator) -> None:
    template = ChatTemplate.load(tokenizer_dir)
    assert template is not None
    request = chat(max_tokens=3, temperature=0)
    prompt = template.render(request.chat_messages())
    native = GenerateRequest(inputs=prompt, parameters=request.to_generate_parameters())
    valid = validator.validate(native, stream=False, add_special_tokens=False)
    assert valid.inputs == "<|im_start|>user\nHello world<|im_end|>\n<|im_start|>assistant\n"
    assert valid.stopping.max_new_tokens == 3 and not valid.sampling.do_sample


def test_completion_happy_path(validator: Validator) -> None:
    request = completion(
        model="gpt-3.5-turbo-instruct", max_tokens=8, temperature=0.8, top_p=0.95, seed=1, stop="\n",
        repetition_penalty=1.1, frequency_penalty=0.5, stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    assert request.prompts(4) == ["Hello world"] and request.include_usage
    params = request.to_generate_parameters()
    assert params.max_new_tokens == 8 and params.do_sample and params.temperature == 0.8 and params.top_p == 0.95
    assert params.stop == ["\n"] and params.repetition_penalty == 1.1 and params.return_full_text is False
    valid = validate(validator, request)
    assert valid.sampling.repetition_penalty == 1.1 and valid.sampling.seed == 1
    assert not validate(validator, completion(temperature=0)).sampling.do_sample


def test_completion_prompts() -> None:
    assert completion(prompt=["a", "b"]).prompts(4) == ["a", "b"]
    with pytest.raises(ValidationError) as info:
        completion(prompt=["a", "b", "c"]).prompts(2)
    assert info.value.message == "Number of prompts exceeds the maximum allowed batch size of 2"
    assert completion_error(prompt=[]) == "`prompt`: Empty array detected. Do not use an empty array for the prompt."
    assert completion_error(prompt=[1, 2]).startswith("`prompt`: must be a string or a list of strings")
    assert completion_error(prompt=None).startswith("`prompt`: must be a string")


def test_completion_suffix_echo_logprobs() -> None:
    assert completion(suffix=None).suffix is None
    assert completion_error(suffix="!") == (
        "`suffix`: Suffix is not supported and can be achieved by preprocessing the prompt."
    )
    assert completion(echo=True).to_generate_parameters().return_full_text is True
    assert completion(logprobs=2).to_generate_parameters().top_n_tokens == 2
    assert completion(logprobs=True).logprobs == 0 and completion(logprobs=False).logprobs is None
    assert completion_error(logprobs=6) == "`logprobs`: Input should be less than or equal to 5"
    assert completion_error(temperature="warm") == "`temperature`: Input should be a valid number"


TOOL = {"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        # issue 14: a tools entry without `function` was answered 200
        ({"tools": [{"type": "function"}]}, "`tools.0.function`: Field required"),
        ({"tools": [{"function": TOOL["function"]}]}, "`tools.0.type`: Field required"),
        ({"tools": [{**TOOL, "type": "retrieval"}]}, "`tools.0.type`: Input should be 'function'"),
        ({"tools": ["f"]}, "`tools.0`: Input should be a valid dictionary or instance of Tool"),
        ({"tools": [{"type": "function", "function": {}}]}, "`tools.0.function.name`: Field required"),
        ({"tools": [{"type": "function", "function": {"name": ""}}]}, "`tools.0.function.name`: must not be empty"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]},
         "`tools.0.function.parameters`: Input should be a valid dictionary"),
        ({"tools": {"type": "function"}}, "`tools`: Input should be a valid list"),
        ({"tool_choice": 1}, "`tool_choice`: must be 'auto', 'none', 'required', a tool's name, or an object"),
        ({"tool_choice": {"type": "function"}}, "`tool_choice.function`: Field required"),
        ({"tool_choice": {"type": "tool", "function": {"name": "f"}}, "tools": [TOOL]},
         "`tool_choice.type`: Input should be 'function'"),
        ({"tool_choice": {"function": {"name": "g"}}, "tools": [TOOL]},
         "`tool_choice`: 'g' is not 'auto', 'none', 'required' or the name of one of `tools` (f)"),
        ({"tool_choice": "requried", "tools": [TOOL]}, "`tool_choice`: 'requried' is not 'auto'"),
        ({"tool_choice": "required"}, "`tool_choice`: 'required' needs `tools`"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"id": "1", "type": "function"}]}]},
         "`messages.0.tool_calls.0.function`: Field required"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"type": "function", "function": {
            "name": "f", "arguments": 3}}]}]}, "`messages.0.tool_calls.0.id`: Field required"),
        ({"messages": [{"role": "", "content": "x"}]}, "`messages.0.role`: must not be empty"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]},
         "`messages.0.content.0.text`: Field required"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}, "name": 3}}},
         "`response_format.json_schema.name`: Input should be a valid string"),
        ({"response_format": "json"}, "`response_format`: must be an object with a `type`"),
        ({"logit_bias": {"1": "x"}}, "`logit_bias.1`: Input should be a valid number"),
        ({"logit_bias": 5}, "`logit_bias`: must be an object of token ids to biases"),
        ({"max_tokens": 0, "max_completion_tokens": 5}, "`max_tokens` must be strictly positive"),
    ],
)
def test_malformed_tools_and_nested_objects_name_the_field(fields: dict[str, Any], message: str) -> None:
    assert chat_error({"messages": USER, **fields}).startswith(message)


def test_tools_and_tool_choice_forms() -> None:
    for choice in ("auto", "none", "f", {"type": "function", "function": {"name": "f"}}, {"function": {"name": "f"}}):
        assert chat(tools=[TOOL], tool_choice=choice).tools == [TOOL]
    assert chat(tool_choice="none").tool_choice == "none"
    assert chat(stream=None, ignore_eos=None).ignore_eos is False


def test_tools_and_tool_calls_reach_the_template_as_sent() -> None:
    # key order and keys the models do not know are kept: templates `tojson` them into the prompt
    tool = {"function": {"parameters": {"type": "object"}, "name": "f", "x-extra": 1}, "type": "function"}
    call = {"type": "function", "function": {"arguments": {"a": 1}, "name": "f"}, "id": "c1", "index": 0}
    request = chat(tools=[tool], messages=[*USER, {"role": "assistant", "tool_calls": [call]}])
    assert json.dumps(request.tools) == json.dumps([tool])
    assert json.dumps(request.chat_messages()[1]["tool_calls"]) == json.dumps([call])
