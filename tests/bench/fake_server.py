"""A fake streaming server for tgi-bench's own tests: TGI-native and OpenAI SSE with controlled delays,
token counts and failures. It runs on its own event loop in a thread, so the CLI under test can call
`asyncio.run` as it does for users."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Behaviour:
    ttft: float = 0.03  # seconds before the first token
    itl: float = 0.005  # seconds between token events
    tokens_per_chunk: int = 1  # OpenAI routes: tokens grouped into one chunk
    honour_ignore_eos: bool = True
    eos_after: int | None = None  # without ignore_eos: stop after this many tokens (EOS)
    refuse_ignore_eos: bool = False  # answer 422 to a body carrying ignore_eos (transformers serve does)
    reject_429_every: int | None = None  # 429 for prompts whose question number is a multiple of this
    stream_error_every: int | None = None  # an error event after the first token for those
    send_done: bool = True  # OpenAI `data: [DONE]` at the end
    usage: bool = True  # OpenAI usage chunk when include_usage is asked
    ping_first: bool = True  # an SSE comment before the first token
    held_back_every: int | None = None  # OpenAI: every n-th token chunk has empty text (as TGI does)
    ttft_per_1k_chars: float = 0.0  # more seconds before the first token per 1,000 prompt characters
    tag_answers: bool = False  # token texts name the request (" r3t1"), so each answer is its own


@dataclass
class FakeServer:
    behaviour: Behaviour = field(default_factory=Behaviour)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeServer:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            app = web.Application()
            app.router.add_post("/generate_stream", self._tgi)
            app.router.add_post("/v1/chat/completions", self._chat)
            app.router.add_post("/v1/completions", self._completions)
            app.router.add_get("/info", self._info)
            app.router.add_get("/v1/models", self._models)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            await web.SockSite(self._runner, sock).start()
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10), "fake server did not start"
        return self

    def stop(self) -> None:
        assert self._loop is not None and self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(10)

    # -- helpers -----------------------------------------------------------------------------------

    @staticmethod
    def question_number(text: str) -> int:
        match = re.search(r"Question (\d+):", text)
        return int(match.group(1)) if match else 0

    def _piece(self, request_number: int, i: int) -> str:
        return f" r{request_number}t{i}" if self.behaviour.tag_answers else f" t{i}"

    def _ttft(self, prompt_chars: int) -> float:
        return self.behaviour.ttft + self.behaviour.ttft_per_1k_chars * prompt_chars / 1000

    def _length(self, requested: int, ignore_eos: bool) -> int:
        b = self.behaviour
        if b.eos_after is not None and not (ignore_eos and b.honour_ignore_eos):
            return min(requested, b.eos_after)
        return requested

    def _rejection(self, number: int) -> web.Response | None:
        every = self.behaviour.reject_429_every
        if every and number % every == 0:
            return web.json_response({"error": "Model is overloaded", "error_type": "overloaded"}, status=429)
        return None

    def _stream_fails(self, number: int) -> bool:
        every = self.behaviour.stream_error_every
        return bool(every and number % every == 0)

    async def _open(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        if self.behaviour.ping_first:
            await response.write(b": ping\n\n")
        return response

    # -- routes ------------------------------------------------------------------------------------

    async def _info(self, request: web.Request) -> web.Response:
        return web.json_response({"model_id": "fake/model", "version": "0.0.0", "max_concurrent_requests": 128})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    async def _tgi(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        me = len(self.bodies)
        params = body.get("parameters") or {}
        number = self.question_number(body["inputs"])
        rejected = self._rejection(number)
        if rejected is not None:
            return rejected
        n = self._length(params["max_new_tokens"], bool(params.get("ignore_eos")))
        response = await self._open(request)
        await asyncio.sleep(self._ttft(len(body["inputs"])))
        for i in range(1, n + 1):
            if i > 1:
                await asyncio.sleep(self.behaviour.itl)
            if i == 2 and self._stream_fails(number):
                await response.write(b'data:{"error":"shard failed","error_type":"generation"}\n\n')
                return response
            last = i == n
            event = {"index": i, "token": {"id": i, "text": self._piece(me, i), "logprob": -0.5, "special": False},
                     "generated_text": "".join(self._piece(me, k) for k in range(1, n + 1)) if last else None,
                     "details": {"finish_reason": "length" if n == params["max_new_tokens"] else "eos_token",
                                 "generated_tokens": n, "seed": None, "input_length": 7} if last else None}
            await response.write(f"data:{json.dumps(event)}\n\n".encode())
        return response

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._openai(request, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._openai(request, chat=False)

    async def _openai(self, request: web.Request, chat: bool) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        me = len(self.bodies)
        if self.behaviour.refuse_ignore_eos and "ignore_eos" in body:
            return web.json_response({"detail": "Unexpected fields in the request: {'ignore_eos'}"}, status=422)
        text = body["messages"][-1]["content"] if chat else body["prompt"]
        number = self.question_number(text)
        rejected = self._rejection(number)
        if rejected is not None:
            return rejected
        n = self._length(body["max_tokens"], bool(body.get("ignore_eos")))
        response = await self._open(request)
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(piece: str | None, finish: str | None = None, role: bool = False) -> bytes:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
                if piece is not None:
                    delta["content"] = piece
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}
            return f"data: {json.dumps({'object': kind, 'choices': [choice]})}\n\n".encode()

        if chat:
            await response.write(chunk(None, role=True))  # vLLM-style role chunk: no token
        chars = sum(len(m["content"]) for m in body["messages"]) if chat else len(body["prompt"])
        await asyncio.sleep(self._ttft(chars))
        sent = 0
        per = max(1, self.behaviour.tokens_per_chunk)
        first = True
        while sent < n:
            if not first:
                await asyncio.sleep(self.behaviour.itl)
            if not first and self._stream_fails(number):
                await response.write(b'data: {"error": {"message": "boom", "type": "generation"}}\n\n')
                return response
            # the first chunk carries one token (prefill), later ones up to `per`
            take = 1 if first else min(per, n - sent)
            piece = "".join(self._piece(me, sent + k + 1) for k in range(take))
            held = self.behaviour.held_back_every
            if held and not first and (sent + 1) % held == 0:
                piece = ""
            await response.write(chunk(piece))
            sent += take
            first = False
        finish = "length" if n == body["max_tokens"] else "stop"
        await response.write(chunk("", finish=finish))
        if self.behaviour.usage and (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 9, "completion_tokens": n, "total_tokens": 9 + n}
            await response.write(f"data: {json.dumps({'object': kind, 'choices': [], 'usage': usage})}\n\n".encode())
        if self.behaviour.send_done:
            await response.write(b"data: [DONE]\n\n")
        return response
