"""A loopback fake of an OpenAI-compatible server (vLLM with LoRA adapters), for the gateway's tests, bench and demo.

It is a real Starlette app on uvicorn (127.0.0.1, port 0) in a background thread, speaking the parts of the API
the gateway proxies: ``GET /v1/models`` (the base model and every loaded adapter, vLLM-style: an adapter's
``parent`` is the base), ``POST /v1/chat/completions`` and ``POST /v1/completions``, streamed (SSE ``data:``
lines ending in ``data: [DONE]``) or not, with ``usage``. A model that is neither the base nor a loaded adapter is
refused with vLLM's 404. Answers come from ``responder(model, text)`` (default: ``"<model>: <last user text>"``),
so a test can make one adapter answer better than another.

Faults, each for the next request only unless noted: ``fail_next(status)`` (an OpenAI-shaped error),
``malformed_next()`` (a 200 whose body is not JSON), ``cut_next(after_chunks)`` (a stream that breaks off without
``[DONE]``); ``delay_s`` delays every answer and ``chunk_delay_s`` every streamed chunk, and a request's
``X-Fake-Delay-Ms`` / ``X-Fake-Chunk-Delay-Ms`` headers do the same for that request alone (the bench's model
server that takes time to answer; the gateway passes the headers on). ``requests`` records
``(path, body, headers)``; ``aborted`` counts streams the client left before the end (the proxy cancelled them),
``abandoned`` non-streamed requests whose client closed the connection while the fake was delaying its answer.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["FakeOpenAIServer"]

Responder = Callable[[str, str], str]


def _default_responder(model: str, text: str) -> str:
    return f"{model}: {text}"


def _error(status: int, message: str, kind: str = "BadRequestError") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}}, status)


def _header_ms(request: Request, name: str, default_s: float) -> float:
    value = request.headers.get(name)
    try:
        return max(0.0, float(value) / 1000) if value else default_s
    except ValueError:
        return default_s


async def _left_within(request: Request, seconds: float) -> bool:
    """Sleep ``seconds``, or less if the client closes the connection meanwhile (then True)."""

    async def disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(disconnect(), seconds)
    except TimeoutError:
        return False
    return True


def _last_text(body: dict[str, Any]) -> str:
    if "messages" in body:
        for message in reversed(body.get("messages") or []):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                return content if isinstance(content, str) else json.dumps(content)
        return ""
    prompt = body.get("prompt", "")
    return prompt if isinstance(prompt, str) else json.dumps(prompt)


class FakeOpenAIServer:
    def __init__(self, base_model: str = "base", *, responder: Responder | None = None, port: int = 0) -> None:
        self.base_model = base_model
        self.adapters: set[str] = set()
        self.responder = responder or _default_responder
        self.requests: list[tuple[str, Any, dict[str, str]]] = []
        self.aborted = 0
        self.completed_streams = 0
        self.abandoned = 0
        self.delay_s = 0.0
        self.chunk_delay_s = 0.0
        self._fail: int | None = None
        self._malformed = False
        self._cut: int | None = None
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # else +40 ms a call (gateway/server.py)
        self._sock.bind(("127.0.0.1", port))
        app = Starlette(
            routes=[
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/chat/completions", self._complete, methods=["POST"]),
                Route("/v1/completions", self._complete, methods=["POST"]),
            ]
        )
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="fake-openai", daemon=True)

    # -- control ----------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The OpenAI base URL (ends in ``/v1``)."""
        host, port = self._sock.getsockname()[:2]
        return f"http://{host}:{port}/v1"

    def fail_next(self, status: int) -> None:
        self._fail = status

    def malformed_next(self) -> None:
        self._malformed = True

    def cut_next(self, after_chunks: int) -> None:
        self._cut = after_chunks

    def load_adapter(self, name: str) -> None:
        self.adapters.add(name)

    def unload_adapter(self, name: str) -> None:
        self.adapters.discard(name)

    def start(self) -> FakeOpenAIServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake OpenAI server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _serve(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._sock]))

    # -- the API ----------------------------------------------------------------------------------------------
    async def _models(self, request: Request) -> Response:
        self.requests.append(("/v1/models", None, dict(request.headers)))
        if (status := self._take_failure()) is not None:
            return _error(status, "injected failure", "InternalServerError")
        data = [{"id": self.base_model, "object": "model", "owned_by": "vllm", "root": self.base_model, "parent": None}]
        data += [
            {"id": name, "object": "model", "owned_by": "vllm", "root": f"/adapters/{name}", "parent": self.base_model}
            for name in sorted(self.adapters)
        ]
        return JSONResponse({"object": "list", "data": data})

    def _take_failure(self) -> int | None:
        with self._lock:
            status, self._fail = self._fail, None
        return status

    async def _complete(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        path = request.url.path
        self.requests.append((path, body, dict(request.headers)))
        delay_s = _header_ms(request, "x-fake-delay-ms", self.delay_s)
        if delay_s and await _left_within(request, delay_s):
            self.abandoned += 1
            return Response(status_code=499)  # nobody reads it
        if (status := self._take_failure()) is not None:
            return _error(status, "injected failure", "InternalServerError" if status >= 500 else "BadRequestError")
        if not isinstance(body, dict):
            return _error(400, "body is not a JSON object")
        model = body.get("model")
        if model != self.base_model and model not in self.adapters:
            return _error(404, f"The model `{model}` does not exist.", "NotFoundError")
        with self._lock:
            malformed, self._malformed = self._malformed, False
            cut, self._cut = self._cut, None
        if malformed:
            return Response(b'{"id": "cmpl-1", "choices": [', media_type="application/json")
        chat = path.endswith("/chat/completions")
        text = self.responder(str(model), _last_text(body))
        prompt_tokens = max(1, len(_last_text(body).split()))
        words = text.split(" ")
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens + len(words),
        }
        created = int(time.time())
        cid = f"{'chatcmpl' if chat else 'cmpl'}-{len(self.requests)}"
        if not body.get("stream"):
            if chat:
                choice: dict[str, Any] = {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            else:
                choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
            kind = "chat.completion" if chat else "text_completion"
            return JSONResponse(
                {"id": cid, "object": kind, "created": created, "model": model, "choices": [choice], "usage": usage}
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        spacing = _header_ms(request, "x-fake-chunk-delay-ms", self.chunk_delay_s)
        chunks = self._stream(cid, str(model), created, words, chat, usage if include_usage else None, cut, spacing)
        return StreamingResponse(chunks, media_type="text/event-stream")

    async def _stream(
        self,
        cid: str,
        model: str,
        created: int,
        words: list[str],
        chat: bool,
        usage: dict[str, int] | None,
        cut: int | None,
        chunk_delay_s: float,
    ) -> AsyncIterator[bytes]:
        kind = "chat.completion.chunk" if chat else "text_completion"
        finished = False
        try:
            for i, word in enumerate(words):
                if cut is not None and i >= cut:
                    raise ConnectionAbortedError("injected: stream cut")
                piece = word if i == 0 else f" {word}"
                if chat:
                    delta: dict[str, Any] = {"content": piece} if i else {"role": "assistant", "content": piece}
                    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
                else:
                    choice = {"index": 0, "text": piece, "finish_reason": None, "logprobs": None}
                chunk = {"id": cid, "object": kind, "created": created, "model": model, "choices": [choice]}
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
                if chunk_delay_s:
                    await asyncio.sleep(chunk_delay_s)
            end: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
            extra: dict[str, Any] = {"delta": {}} if chat else {"text": "", "logprobs": None}
            end.update(extra)
            yield b"data: " + json.dumps({"id": cid, "object": kind, "created": created, "model": model,
                                          "choices": [end]}).encode() + b"\n\n"  # fmt: skip
            if usage is not None:
                last = {"id": cid, "object": kind, "created": created, "model": model, "choices": [], "usage": usage}
                yield b"data: " + json.dumps(last).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
            finished = True
            self.completed_streams += 1
        finally:
            if not finished and cut is None:
                self.aborted += 1


if __name__ == "__main__":  # ``python -m tools.serving.openai_fake PORT [BASE_MODEL]``: a fake in its own process
    import sys

    fake = FakeOpenAIServer(sys.argv[2] if len(sys.argv) > 2 else "base", port=int(sys.argv[1]))
    fake._serve()
