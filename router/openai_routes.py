"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from router.chat_template import ChatTemplate, TemplateError, flatten_content
from router.openai_response_schemas import (
    AnsweredFunctionCall,
    AnsweredToolCall,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatDelta,
    ChatLogprobs,
    ChatTokenLogprob,
    ChunkFunctionCall,
    ChunkToolCall,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    Model,
    ModelList,
    OpenAIFinishReason,
    PromptTokensDetails,
    TopLogprob,
    Usage,
)
from router.openai_schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    parse_chat_request,
    parse_completion_request,
)
from router.queue import Entry
from router.response_schemas import ErrorResponse
from router.responses import json_response, sse_event
from router.schemas import GenerateRequest
from router.server import VERSION, Admitted, GenerationFailed, Router
from router.sse import SseResponse, StreamFailedBeforeFirstByte, pump_events
from router.stream import ErrorEvent, TokenEvent
from router.token_bytes import TokenBytes
from router.tool_call_stream import CallDelta, ToolCallReader
from router.tool_grammar import ToolChoice, resolve_tool_choice, tool_call_lark, tool_prompt
from router.types import Finished, FinishReason, Token, ValidRequest

DONE = b"data: [DONE]\n\n"


def openai_finish_reason(reason: FinishReason, tool_calls: bool = False) -> OpenAIFinishReason:
    """OpenAI has no `stop_sequence`: a stop string and EOS both read `stop`; an answer of tool calls
    that ended by itself (not cut by length) reads `tool_calls`."""
    if reason == "length":
        return "length"
    return "tool_calls" if tool_calls else "stop"


def _chunk_tool_calls(deltas: list[CallDelta]) -> list[ChunkToolCall]:
    return [ChunkToolCall(index=d.index, id=d.id, type="function" if d.id is not None else None,
                          function=ChunkFunctionCall(name=d.name, arguments=d.arguments)) for d in deltas]


def _content(event: TokenEvent, streamed: str) -> str:
    """This token's text for a client; the last one also carries any text flushed at the very end."""
    text = "" if event.token.special else event.token.text
    finished = event.finished
    if finished is not None and finished.generated_text.startswith(streamed + text):
        text = finished.generated_text[len(streamed):]
    return text


def _token_bytes(token: Token, token_bytes: TokenBytes | None) -> list[int]:
    return token_bytes.of(token) if token_bytes is not None else list(token.text.encode())


def _chat_logprobs(events: list[TokenEvent], token_bytes: TokenBytes | None) -> ChatLogprobs:
    return ChatLogprobs(content=[
        ChatTokenLogprob(
            token=e.token.text, logprob=e.token.logprob, bytes=_token_bytes(e.token, token_bytes),
            top_logprobs=[TopLogprob(token=t.text, logprob=t.logprob, bytes=_token_bytes(t, token_bytes))
                          for t in e.top_tokens],
        ) for e in events
    ])


def _completion_logprobs(events: list[TokenEvent], offset: int) -> CompletionLogprobs:
    offsets, position = [], offset
    for e in events:
        offsets.append(position)
        position += len(e.token.text)
    return CompletionLogprobs(
        tokens=[e.token.text for e in events],
        token_logprobs=[e.token.logprob for e in events],
        top_logprobs=[{t.text: t.logprob for t in e.top_tokens} for e in events],
        text_offset=offsets,
    )


def _usage(valids: list[ValidRequest], finished: list[Finished], entries: list[Entry]) -> Usage:
    prompt = sum(v.input_length for v in valids)
    completion = sum(f.generated_tokens for f in finished)
    cached = sum(e.cached_prompt_tokens or 0 for e in entries)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                 prompt_tokens_details=PromptTokensDetails(cached_tokens=cached))


def chat_prompt(template: ChatTemplate | None, chat: ChatCompletionRequest, tools: ToolChoice | None) -> str:
    """The prompt. The tools the model may call go to the template; one that does not render `tools` gets
    them, and the answer format, after the last message (as TGI does)."""
    if template is None:
        raise TemplateError("this model has no chat template: use /v1/completions or /generate")
    messages = chat.chat_messages()
    if tools is None:
        return template.render(messages, add_generation_prompt=True)
    offered = [tool for tool in chat.tools or [] if tool["function"]["name"] in tools.names]
    if template.uses_tools:
        return template.render(messages, add_generation_prompt=True, tools=offered)
    last = messages[-1]
    listed = tool_prompt(offered, tools, chat.tool_prompt)
    messages[-1] = {**last, "content": flatten_content(last.get("content")) + listed}
    return template.render(messages, add_generation_prompt=True)


class OpenAIRoutes:
    def __init__(self, router: Router, template: ChatTemplate | None, token_bytes: TokenBytes | None = None) -> None:
        self.router = router
        self.template = template
        self.token_bytes = token_bytes  # None: a token's bytes are its text's
        self.created = int(time.time())

    def add_to(self, app: web.Application) -> None:
        app.add_routes([
            web.post("/v1/chat/completions", self.chat_completions),
            web.post("/v1/completions", self.completions),
            web.get("/v1/models", self.models),
        ])

    def _envelope(self, request_id: str) -> dict[str, Any]:
        """The fields every chat completion, chunk and completion starts with, but `object`."""
        return {"id": request_id, "created": int(time.time()), "model": self.router.config.model_id,
                "system_fingerprint": f"{VERSION}-native"}

    async def models(self, request: web.Request) -> web.Response:
        return json_response(ModelList(object="list", data=[
            Model(id=self.router.config.model_id, object="model", created=self.created, owned_by="tgi-py"),
        ]))

    # ---- chat ---------------------------------------------------------------------------------
    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        async def work(body: bytes, admitted: Admitted) -> web.StreamResponse:
            chat = parse_chat_request(body)
            tools = resolve_tool_choice(chat.tools, chat.tool_choice, chat.parallel_tool_calls)
            prompt = chat_prompt(self.template, chat, tools)
            generate = GenerateRequest(inputs=prompt, parameters=chat.to_generate_parameters())
            # The rendered template already holds the special tokens the model expects.
            valid = await self.router.validate(generate, chat.stream, add_special_tokens=False,
                                               tool_grammar=tool_call_lark(chat.tools or [], tools) if tools else "")
            entry = admitted.submit(valid)
            request_id = f"chatcmpl-{uuid.uuid4().hex}"
            if not chat.stream:
                events = await self.router.collect(entry)
                finished = events[-1].finished
                assert finished is not None
                self.router.record_success(valid, entry, finished.generated_tokens)
                message = AssistantMessage(role="assistant", content=finished.generated_text)
                calls = False
                if tools is not None:
                    reader = ToolCallReader(tools.text)
                    reader.feed(finished.generated_text)
                    if reader.calls:
                        calls = True
                        message = AssistantMessage(role="assistant", content=None, tool_calls=[
                            AnsweredToolCall(id=c.id, type="function",
                                     function=AnsweredFunctionCall(name=c.name, arguments=c.arguments))
                            for c in reader.calls])
                return json_response(ChatCompletion(
                    **self._envelope(request_id), object="chat.completion",
                    choices=[ChatCompletionChoice(
                        index=0,
                        message=message,
                        logprobs=_chat_logprobs(events, self.token_bytes) if chat.logprobs else None,
                        finish_reason=openai_finish_reason(finished.finish_reason, calls),
                    )],
                    usage=_usage([valid], [finished], [entry]),
                ))
            streamed = ""
            reader = ToolCallReader(tools.text) if tools is not None else None

            def chunk(event: TokenEvent) -> bytes:
                nonlocal streamed
                text = _content(event, streamed)
                first = not streamed and event.index == 1
                streamed += text
                if reader is not None:
                    return tool_chunks(event, text, first)
                return sse_event(ChatCompletionChunk(
                    **self._envelope(request_id), object="chat.completion.chunk",
                    choices=[ChatCompletionChunkChoice(
                        index=0, delta=ChatDelta(role="assistant" if first else None, content=text),
                        logprobs=_chat_logprobs([event], self.token_bytes) if chat.logprobs else None,
                        finish_reason=openai_finish_reason(event.finished.finish_reason) if event.finished else None,
                    )],
                ), space=True)

            def tool_chunks(event: TokenEvent, text: str, first: bool) -> bytes:
                """A token of an answer that may be tool calls: its content, or its call deltas, one chunk
                each; the last token's chunks end with one carrying finish_reason."""
                assert reader is not None
                piece = reader.feed(text)
                deltas: list[ChatDelta] = []
                if piece.content:
                    deltas.append(ChatDelta(content=piece.content))
                deltas += [ChatDelta(tool_calls=_chunk_tool_calls([d])) for d in piece.deltas]
                if first and not deltas:
                    deltas.append(ChatDelta(content=None if reader.mode == "calls" else ""))
                finish: OpenAIFinishReason | None = None
                if event.finished is not None:
                    finish = openai_finish_reason(event.finished.finish_reason, bool(reader.calls))
                    if not deltas or deltas[-1].tool_calls is not None:
                        deltas.append(ChatDelta(content=None if reader.calls else ""))
                out = []
                for i, delta in enumerate(deltas):
                    if first and i == 0:
                        delta = delta.model_copy(update={"role": "assistant"})
                    last = i == len(deltas) - 1
                    out.append(sse_event(ChatCompletionChunk(
                        **self._envelope(request_id), object="chat.completion.chunk",
                        choices=[ChatCompletionChunkChoice(
                            index=0, delta=delta,
                            logprobs=_chat_logprobs([event], self.token_bytes) if chat.logprobs and last else None,
                            finish_reason=finish if last else None,
                        )],
                    ), space=True))
                return b"".join(out)

            def usage_chunk(last: TokenEvent) -> bytes:
                assert last.finished is not None
                return sse_event(ChatCompletionChunk(**self._envelope(request_id), object="chat.completion.chunk",
                                                     choices=[], usage=_usage([valid], [last.finished], [entry])),
                                 space=True)

            return await self._stream(request, [(valid, entry)], [chunk], usage_chunk if chat.include_usage else None)

        return await self.router.handle(request, work)

    # ---- completions --------------------------------------------------------------------------
    async def completions(self, request: web.Request) -> web.StreamResponse:
        async def work(body: bytes, admitted: Admitted) -> web.StreamResponse:
            completion: CompletionRequest = parse_completion_request(body)
            prompts = completion.prompts(self.router.config.max_client_batch_size)
            parameters = completion.to_generate_parameters()
            valids = [await self.router.validate(GenerateRequest(inputs=p, parameters=parameters), completion.stream)
                      for p in prompts]
            admitted.admit(len(valids))  # a slot for every prompt, or 429
            entries = [admitted.submit(v) for v in valids]
            request_id = f"cmpl-{uuid.uuid4().hex}"
            want_logprobs = completion.logprobs is not None
            if not completion.stream:
                choices, finished_all = [], []
                for index, (valid, entry) in enumerate(zip(valids, entries, strict=True)):
                    events = await self.router.collect(entry)
                    finished = events[-1].finished
                    assert finished is not None
                    self.router.record_success(valid, entry, finished.generated_tokens)
                    finished_all.append(finished)
                    text = valid.inputs + finished.generated_text if completion.echo else finished.generated_text
                    choices.append(CompletionChoice(
                        index=index, text=text,
                        logprobs=_completion_logprobs(events, len(text) - len(finished.generated_text))
                        if want_logprobs else None,
                        finish_reason=openai_finish_reason(finished.finish_reason),
                    ))
                return json_response(Completion(**self._envelope(request_id), object="text_completion",
                                                choices=choices, usage=_usage(valids, finished_all, entries)))

            def chunker(index: int, valid: ValidRequest) -> Callable[[TokenEvent], bytes]:
                streamed = ""

                def chunk(event: TokenEvent) -> bytes:
                    nonlocal streamed
                    text = _content(event, streamed)
                    if completion.echo and event.index == 1:
                        text = valid.inputs + text
                    streamed += text
                    return sse_event(Completion(
                        **self._envelope(request_id), object="text_completion",
                        choices=[CompletionChoice(
                            index=index, text=text,
                            logprobs=_completion_logprobs([event], 0) if want_logprobs else None,
                            finish_reason=openai_finish_reason(event.finished.finish_reason) if event.finished
                            else None,
                        )],
                    ), space=True)

                return chunk

            finals: list[Finished] = []

            def usage_chunk(last: TokenEvent) -> bytes:
                return sse_event(Completion(**self._envelope(request_id), object="text_completion", choices=[],
                                            usage=_usage(valids, finals, entries)), space=True)

            return await self._stream(request, list(zip(valids, entries, strict=True)),
                                      [chunker(i, v) for i, v in enumerate(valids)],
                                      usage_chunk if completion.include_usage else None, finals)

        return await self.router.handle(request, work)

    # ---- shared streaming ---------------------------------------------------------------------
    async def _stream(self, request: web.Request, requests: list, renderers: list[Callable[[TokenEvent], bytes]],
                      usage: Callable[[TokenEvent], bytes] | None, finals: list[Finished] | None = None
                      ) -> web.StreamResponse:
        """Each request's chunks in turn (they generate concurrently), then usage, then `data: [DONE]`."""
        sse = SseResponse(request)
        finals = [] if finals is None else finals
        last: TokenEvent | None = None

        def error(event: ErrorEvent) -> bytes:
            return sse_event(ErrorResponse(error=event.message, error_type=event.error_type), space=True)

        try:
            for (valid, entry), render in zip(requests, renderers, strict=True):
                last = await pump_events(sse, entry.stream, render, error, self.router.config.sse_ping_interval,
                                         self.router.observe_token_overhead)
                if last is None:
                    self.router.metrics.request_failure.labels("generation").inc()
                    return await sse.end()
                assert last.finished is not None
                finals.append(last.finished)
                self.router.record_success(valid, entry, last.finished.generated_tokens)
            if usage is not None and last is not None:
                await sse.write(usage(last))
            await sse.write(DONE)
        except StreamFailedBeforeFirstByte as exc:
            raise GenerationFailed(exc.event) from exc
        except ConnectionResetError:
            return sse.response or web.Response(status=499)
        return await sse.end()
