"""Request validation: parse the body, tokenise, apply the limits, resolve parameters.

Rules and messages follow TGI's router (validation.rs); CONTRACT.md section 3. Everything a client
can get wrong surfaces as `ValidationError` (HTTP 422, `error_type: validation`).
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import tokenizers

from router.grammar import GrammarCompiler, GrammarError
from router.schemas import GenerateParameters, GenerateRequest, TokenizeRequest
from router.types import SamplingParameters, StoppingParameters, ValidRequest

# A list of a thousand bad stop strings should not become a thousand-line error message.
_MAX_REPORTED_ERRORS = 3

_Model = TypeVar("_Model", bound=pydantic.BaseModel)


class ValidationError(Exception):
    """A client error; `message` is shown to the client as is."""

    error_type = "validation"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class ValidationLimits:
    max_input_tokens: int
    max_total_tokens: int
    max_stop_sequences: int = 4
    max_top_n_tokens: int = 5
    max_best_of: int = 2

    def __post_init__(self) -> None:
        # A configuration error, not a request error: fail when the server starts.
        if self.max_input_tokens < 1:
            raise ValueError(f"max_input_tokens must be >= 1, got {self.max_input_tokens}")
        if self.max_total_tokens <= self.max_input_tokens:
            raise ValueError(
                f"max_total_tokens ({self.max_total_tokens}) must be greater than "
                f"max_input_tokens ({self.max_input_tokens})"
            )
        if self.max_stop_sequences < 0 or self.max_top_n_tokens < 0 or self.max_best_of < 1:
            raise ValueError("max_stop_sequences and max_top_n_tokens must be >= 0, max_best_of >= 1")


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON (and serde) do not.
    raise ValueError(f"invalid JSON constant {name}")


def _format_pydantic_error(err: pydantic.ValidationError) -> str:
    parts = []
    errors = err.errors(include_url=False, include_input=False, include_context=False)
    for item in errors[:_MAX_REPORTED_ERRORS]:
        loc = ".".join(str(part) for part in item["loc"])
        parts.append(f"`{loc}`: {item['msg']}" if loc else item["msg"])
    if len(errors) > _MAX_REPORTED_ERRORS:
        parts.append(f"and {len(errors) - _MAX_REPORTED_ERRORS} more errors")
    return "; ".join(parts)


def _parse(model: type[_Model], body: bytes | str) -> _Model:
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValidationError(f"request body is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValidationError(f"request body must be a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as err:
        raise ValidationError(_format_pydantic_error(err)) from None


def parse_generate_request(body: bytes | str) -> GenerateRequest:
    """Body of `/generate`, `/generate_stream` or `/` -> GenerateRequest, or ValidationError."""
    return _parse(GenerateRequest, body)


def parse_tokenize_request(body: bytes | str) -> TokenizeRequest:
    """Body of `/tokenize` -> TokenizeRequest, or ValidationError."""
    return _parse(TokenizeRequest, body)


def load_tokenizer(model_dir: Path) -> tokenizers.Tokenizer:
    """The fast tokenizer of a model directory (or a tokenizer.json path)."""
    path = model_dir if model_dir.is_file() else model_dir / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no tokenizer.json in {model_dir}: tgi-py's router needs a fast (tokenizers) tokenizer"
        )
    try:
        tokenizer = tokenizers.Tokenizer.from_file(str(path))
    except Exception as err:
        raise ValueError(f"cannot load tokenizer {path}: {err}") from err
    _disable_truncation_and_padding(tokenizer)
    return tokenizer


def _disable_truncation_and_padding(tokenizer: tokenizers.Tokenizer) -> None:
    # Some tokenizer.json files ship with truncation or padding on; either would silently change
    # the token count that the limits are checked against.
    if tokenizer.truncation is not None:
        tokenizer.no_truncation()
    if tokenizer.padding is not None:
        tokenizer.no_padding()


class Validator:
    """Stateless after construction, so `validate` may run on several threads at once."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, limits: ValidationLimits) -> None:
        _disable_truncation_and_padding(tokenizer)
        self.tokenizer = tokenizer
        self.limits = limits
        self.grammars = GrammarCompiler(tokenizer)

    def validate(
        self, request: GenerateRequest, *, stream: bool, add_special_tokens: bool = True, tool_grammar: str = ""
    ) -> ValidRequest:
        """Apply every rule of CONTRACT section 3; `add_special_tokens=False` is for prompts that
        already carry them (a rendered chat template). `tool_grammar`: the Lark grammar of a chat
        request's tool calls (router/tool_grammar.py), which stands in for `parameters.grammar`."""
        started = time.perf_counter()
        params = request.parameters
        sampling = _sampling_parameters(params)
        max_new_tokens = self._check_parameters(request, sampling, stream=stream)
        sampling = self._with_grammar(sampling, params, tool_grammar)
        input_ids = self._input_ids(request.inputs, params.truncate, add_special_tokens)
        input_length = len(input_ids)
        limits = self.limits
        if max_new_tokens is None:
            # TGI v3: no max_new_tokens means "all the room left"; the limits guarantee >= 1.
            max_new_tokens = limits.max_total_tokens - input_length
        if input_length + max_new_tokens > limits.max_total_tokens:
            raise ValidationError(
                f"`inputs` tokens + `max_new_tokens` must be <= {limits.max_total_tokens}. "
                f"Given: {input_length} `inputs` tokens and {max_new_tokens} `max_new_tokens`"
            )
        # TGI's comparison is `>` despite the wording "less than": exactly max_input_tokens is fine.
        if input_length > limits.max_input_tokens:
            raise ValidationError(
                f"`inputs` must have less than {limits.max_input_tokens} tokens. Given: {input_length}"
            )
        return ValidRequest(
            inputs=request.inputs,
            input_ids=tuple(input_ids),
            sampling=sampling,
            stopping=StoppingParameters(max_new_tokens=max_new_tokens, stop_sequences=tuple(params.stop),
                                        ignore_eos_token=params.ignore_eos),
            truncate=params.truncate,
            details=params.details,
            decoder_input_details=params.decoder_input_details,
            top_n_tokens=params.top_n_tokens or 0,
            return_full_text=bool(params.return_full_text),
            validation_seconds=time.perf_counter() - started,
        )

    def _with_grammar(self, sampling: SamplingParameters, params: GenerateParameters,
                      tool_grammar: str) -> SamplingParameters:
        try:
            if tool_grammar:
                return dataclasses.replace(sampling, grammar=self.grammars.compile_lark(tool_grammar))
            if params.grammar is not None:
                return dataclasses.replace(sampling, grammar=self.grammars.compile(params.grammar))
        except GrammarError as err:
            raise ValidationError(str(err)) from None
        return sampling

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[dict[str, Any]]:
        """`/tokenize`: one `{"id", "text", "start", "stop"}` per token, offsets in characters.

        The Python binding of tokenizers reports character offsets. A byte-level token that holds
        only part of a character (a piece of an emoji) spans the whole character, so neighbouring
        tokens can share a span; `text` is always `text[start:stop]`."""
        try:
            encoding = self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        except Exception as err:
            raise ValidationError(f"tokenizer error {err}") from None
        return [
            {"id": token_id, "text": text[start:stop], "start": start, "stop": stop}
            for token_id, (start, stop) in zip(encoding.ids, encoding.offsets, strict=True)
        ]

    def _check_parameters(
        self, request: GenerateRequest, sampling: SamplingParameters, *, stream: bool
    ) -> int | None:
        """Every rule that needs no tokens, in TGI's order (so the first error reported matches).
        Returns the requested max_new_tokens (None when absent)."""
        params = request.parameters
        limits = self.limits
        best_of = 1 if params.best_of is None else params.best_of
        if best_of > 1 and not sampling.do_sample:
            raise ValidationError("you must use sampling when `best_of` is > 1")
        _check_sampling_ranges(params)
        if params.max_new_tokens is not None and params.max_new_tokens <= 0:
            raise ValidationError("`max_new_tokens` must be strictly positive")
        if len(params.stop) > limits.max_stop_sequences:
            raise ValidationError(
                f"`stop` supports up to {limits.max_stop_sequences} stop sequences. Given: {len(params.stop)}"
            )
        if best_of > 1 and params.seed is not None:
            raise ValidationError("`seed` must not be set when `best_of` > 1")
        top_n = params.top_n_tokens
        if top_n is not None and not 0 <= top_n <= limits.max_top_n_tokens:
            raise ValidationError(
                f"`top_n_tokens` must be >= 0 and <= {limits.max_top_n_tokens}. Given: {top_n}"
            )
        if not request.inputs:
            raise ValidationError("`inputs` cannot be empty")
        truncate = params.truncate
        if truncate is not None and not 0 < truncate <= limits.max_input_tokens:
            raise ValidationError(
                "`truncate` must be strictly positive and less than "
                f"{limits.max_input_tokens}. Given: {truncate}"
            )
        _check_best_of(best_of, limits.max_best_of, stream=stream)
        if stream and params.decoder_input_details:
            raise ValidationError("`decoder_input_details` == true is not supported when streaming tokens")
        _check_unsupported(params)
        return params.max_new_tokens

    def _input_ids(self, inputs: str, truncate: int | None, add_special_tokens: bool) -> list[int]:
        try:
            ids = self.tokenizer.encode(inputs, add_special_tokens=add_special_tokens).ids
        except Exception as err:
            raise ValidationError(f"tokenizer error {err}") from None
        if not ids:
            # A normaliser can erase a non-empty string; a prompt of zero tokens cannot be prefilled.
            raise ValidationError("`inputs` cannot be empty (it has no tokens)")
        if truncate is not None and len(ids) > truncate:
            # like TGI: keep the end of the prompt, closest to what is generated next
            ids = ids[-truncate:]
        return ids


def _sampling_parameters(params: GenerateParameters) -> SamplingParameters:
    """Resolve defaults. Sampling is on with do_sample, or any warper set (temperature != 1 is a
    no-op otherwise); only then is a seed drawn, so that it can be reported back."""
    temperature = 1.0 if params.temperature is None else params.temperature
    do_sample = (
        params.do_sample
        or temperature != 1.0
        or params.top_k is not None
        or params.top_p is not None
        or params.typical_p is not None
    )
    seed = params.seed
    if do_sample and seed is None:
        seed = secrets.randbits(64)  # u64, like TGI's thread_rng().gen()
    return SamplingParameters(
        temperature=temperature,
        top_k=0 if params.top_k is None else params.top_k,
        top_p=1.0 if params.top_p is None else params.top_p,
        typical_p=1.0 if params.typical_p is None else params.typical_p,
        do_sample=do_sample,
        seed=seed if do_sample else None,
        repetition_penalty=1.0 if params.repetition_penalty is None else params.repetition_penalty,
        frequency_penalty=0.0 if params.frequency_penalty is None else params.frequency_penalty,
        presence_penalty=0.0 if params.presence_penalty is None else params.presence_penalty,
    )


def _check_sampling_ranges(params: GenerateParameters) -> None:
    if params.temperature is not None and params.temperature <= 0.0:
        raise ValidationError("`temperature` must be strictly positive")
    if params.repetition_penalty is not None and params.repetition_penalty <= 0.0:
        raise ValidationError("`repetition_penalty` must be strictly positive")
    if params.frequency_penalty is not None and not -2.0 <= params.frequency_penalty <= 2.0:
        raise ValidationError("`frequency_penalty` must be >= -2.0 and <= 2.0")
    if params.presence_penalty is not None and not -2.0 <= params.presence_penalty <= 2.0:
        raise ValidationError("`presence_penalty` must be >= -2.0 and <= 2.0")
    # 1.0 is the neutral value internally, but TGI refuses it from users (its own unit test).
    if params.top_p is not None and not 0.0 < params.top_p < 1.0:
        raise ValidationError("`top_p` must be > 0.0 and < 1.0")
    if params.typical_p is not None and not 0.0 < params.typical_p < 1.0:
        raise ValidationError("`typical_p` must be > 0.0 and < 1.0")
    if params.top_k is not None and params.top_k <= 0:
        raise ValidationError("`top_k` must be strictly positive")


def _check_best_of(best_of: int, max_best_of: int, *, stream: bool) -> None:
    if max_best_of == 1 and best_of != 1:
        raise ValidationError("`best_of` != 1 is not allowed for this endpoint")
    if not 0 < best_of <= max_best_of:
        raise ValidationError(f"`best_of` must be > 0 and <= {max_best_of}. Given: {best_of}")
    if stream and best_of != 1:
        raise ValidationError("`best_of` != 1 is not supported when streaming tokens")
    if best_of > 1:
        raise ValidationError("`best_of` > 1 is not supported by this server yet")


def _check_unsupported(params: GenerateParameters) -> None:
    if params.watermark:
        raise ValidationError("`watermark` is not supported by this server yet")
    if params.adapter_id:
        raise ValidationError("`adapter_id` is not supported by this server yet (no LoRA adapters)")
