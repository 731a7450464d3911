"""A minimal HTTP server that follows SGLang's documented request and response shapes.

For protocol-conformance tests of the ``sglang-server`` and ``openai`` backends only: it checks
that our engines speak SGLang's wire format and honour its abort protocol. It is not SGLang
and proves nothing about SGLang itself. The shapes follow SGLang's documentation and HTTP
server (``docs/basic_usage/native_api.ipynb``, ``docs/basic_usage/send_request.ipynb``,
``python/sglang/srt/entrypoints/http_server.py``):

- ``POST /generate`` with ``{"text", "sampling_params": {"max_new_tokens", "temperature",
  "stop"}, "stream": true, "rid"}`` answers server-sent events
  ``data: {"text", "output_ids", "meta_info": {"id", "finish_reason", "prompt_tokens",
  "completion_tokens", "cached_tokens"}}`` and ends with ``data: [DONE]``. ``text`` is the
  whole reply so far, or only the new text when started with ``incremental=True`` (SGLang's
  ``--incremental-streaming-output``). ``finish_reason`` is null until the last event, then
  ``{"type": "stop" | "length" | "abort", ...}``. A streaming error is ``data: {"error":
  {"message": ...}}`` before ``[DONE]``.
- ``POST /abort_request`` with ``{"rid"}`` ends that request: its stream gets a last event
  with ``finish_reason.type == "abort"``, then ``[DONE]``. A client that disconnects has its
  request aborted too, as SGLang does.
- ``GET /health`` and ``GET /health_generate`` answer 200; ``GET /get_server_info`` returns
  the server arguments (``incremental_streaming_output`` among them); ``GET /get_model_info``.
- SGLang's OpenAI-compatible ``POST /v1/chat/completions`` and ``/v1/completions`` (streaming,
  with SGLang's extra ``rid`` field) and ``GET /v1/models``.

"Tokens" are words of a scripted reply; prompt and cached token counts are characters, and
``cached_tokens`` is the longest prefix shared with any earlier prompt (a radix cache's view).
Everything the server saw is recorded for the tests: raw request bodies, aborts, disconnects,
and which requests are still generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

STARTUP_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


@dataclass
class RecordedRequest:
    method: str
    path: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class _Generation:
    rid: str
    prompt: str
    words: list[str]
    max_tokens: int
    cached_tokens: int
    drop_after: int | None = None
    stall_after: int | None = None
    error_after: int | None = None
    self_abort_after: int | None = None
    aborted: threading.Event = field(default_factory=threading.Event)


class ConformanceServer:
    """Runs on 127.0.0.1 on a free port, in its own thread and event loop; use as a context manager."""

    def __init__(
        self,
        reply: str = "Paris is the capital of France, and it is lovely in spring.",
        token_interval_s: float = 0.02,
        incremental: bool = False,
        model_path: str = "conformance/model",
    ) -> None:
        self.reply_for: Callable[[str], str] = lambda prompt: reply
        self.token_interval_s = token_interval_s
        self.incremental = incremental
        self.model_path = model_path
        # Behaviours a test can switch on (read when a generation request arrives).
        self.endless = False
        """Generate until max tokens (repeating the reply), as a long answer would."""
        self.fail_statuses: list[int] = []
        """Answer the next generation requests with these HTTP statuses, one each, then serve normally."""
        self.drop_after_tokens: int | None = None
        """Reset the connection after this many tokens (the server dies mid-stream)."""
        self.stall_after_tokens: int | None = None
        """Send nothing more after this many tokens, until the client goes away."""
        self.error_after_tokens: int | None = None
        """Send an error event after this many tokens, as SGLang does for a failure mid-stream."""
        self.self_abort_after_tokens: int | None = None
        """End with finish_reason abort after this many tokens, as when SGLang aborts a request itself."""
        self.faulty_requests: int | None = None
        """The faults above hit only this many more generation requests (None: all of them)."""
        # What happened.
        self.requests: list[RecordedRequest] = []
        self.aborts: list[str] = []
        self.disconnects: list[str] = []
        self.finished: dict[str, str] = {}
        self.running: set[str] = set()
        self.prompts: list[str] = []
        self._lock = threading.Lock()
        self._generations: dict[str, _Generation] = {}
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self.port = 0

    # ---------------------------------------------------------------- lifecycle

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ConformanceServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # reported to start()
                errors.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_until_complete(self._serve_until_stopped())
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="sglang-conformance-server", daemon=True)
        self._thread.start()
        if not ready.wait(STARTUP_TIMEOUT_S):
            raise RuntimeError("conformance server did not start")
        if errors:
            raise errors[0]

    async def _serve_until_stopped(self) -> None:
        assert self._server is not None
        while not self._stopped.is_set():
            await asyncio.sleep(0.02)
        self._server.close()
        for generation in list(self._generations.values()):
            generation.aborted.set()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)
            if self._thread.is_alive():
                raise RuntimeError("conformance server did not stop")

    # ---------------------------------------------------------------- inspection

    def generate_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path in ("/generate", "/v1/chat/completions", "/v1/completions")]

    def wait_idle(self, timeout_s: float = 5.0) -> bool:
        """True once no request is generating (False if one still is after ``timeout_s``)."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            with self._lock:
                if not self.running:
                    return True
            time.sleep(0.01)
        return False

    # ---------------------------------------------------------------- HTTP

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            headers = {}
            for line in header_lines:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
            with self._lock:
                self.requests.append(RecordedRequest(method, path, body))
            await self._route(method, path.split("?", 1)[0], body, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
                await writer.wait_closed()

    async def _route(
        self, method: str, path: str, body: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if method == "GET" and path in ("/health", "/health_generate"):
            await _respond(writer, 200, b"")
        elif method == "GET" and path == "/get_server_info":
            info = {"model_path": self.model_path, "incremental_streaming_output": self.incremental, "version": "c"}
            await _respond_json(writer, 200, info)
        elif method == "GET" and path == "/get_model_info":
            await _respond_json(writer, 200, {"model_path": self.model_path, "is_generation": True})
        elif method == "GET" and path == "/v1/models":
            await _respond_json(writer, 200, {"object": "list", "data": [{"id": self.model_path, "object": "model"}]})
        elif method == "POST" and path == "/abort_request":
            rid = str(json.loads(body or b"{}").get("rid", ""))
            with self._lock:
                self.aborts.append(rid)
                generation = self._generations.get(rid)
            if generation is not None:
                generation.aborted.set()
            await _respond(writer, 200, b"")
        elif method == "POST" and path in ("/generate", "/v1/chat/completions", "/v1/completions"):
            await self._generate(path, json.loads(body), reader, writer)
        else:
            await _respond_json(writer, 404, {"detail": "Not Found"})

    async def _generate(
        self, path: str, request: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with self._lock:
            status = self.fail_statuses.pop(0) if self.fail_statuses else 200
        if status != 200:
            await _respond_json(writer, status, {"error": {"message": f"injected status {status}"}})
            return
        native = path == "/generate"
        if native:
            prompt = request.get("text") or ""
            max_tokens = int((request.get("sampling_params") or {}).get("max_new_tokens", 128))
        elif path == "/v1/chat/completions":
            prompt = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in request["messages"])
            prompt += "<|im_start|>assistant\n"
            max_tokens = int(request.get("max_tokens") or 128)
        else:
            prompt = request.get("prompt") or ""
            max_tokens = int(request.get("max_tokens") or 128)
        rid = str(request.get("rid") or f"conf-{next(self._ids)}")
        words = self.reply_for(prompt).split()
        with self._lock:
            cached = max((_common_prefix_len(prompt, p) for p in self.prompts), default=0)
            self.prompts.append(prompt)
            generation = _Generation(rid, prompt, words, max_tokens, cached)
            if self.faulty_requests is None or self.faulty_requests > 0:
                generation.drop_after = self.drop_after_tokens
                generation.stall_after = self.stall_after_tokens
                generation.error_after = self.error_after_tokens
                generation.self_abort_after = self.self_abort_after_tokens
                if self.faulty_requests is not None:
                    self.faulty_requests -= 1
            self._generations[rid] = generation
            self.running.add(rid)
        gone = asyncio.Event()

        async def watch_client() -> None:
            with contextlib.suppress(ConnectionError):
                await reader.read(1)  # the body was read: only EOF comes, when the client goes away
            gone.set()

        watcher = asyncio.create_task(watch_client())
        reason = "?"
        try:
            if not request.get("stream"):
                reason = await self._unary(generation, native, writer)
            else:
                reason = await self._stream(generation, native, path, writer, gone)
        finally:
            watcher.cancel()
            with self._lock:
                self.running.discard(rid)
                self._generations.pop(rid, None)
                self.finished[rid] = reason
                if reason == "disconnect":
                    self.disconnects.append(rid)

    def _word(self, generation: _Generation, index: int) -> str | None:
        if index >= generation.max_tokens:
            return None
        if index >= len(generation.words) and not self.endless:
            return None
        word = generation.words[index % len(generation.words)]
        return word if index == 0 else " " + word

    async def _unary(self, generation: _Generation, native: bool, writer: asyncio.StreamWriter) -> str:
        pieces = list(itertools.takewhile(bool, (self._word(generation, i) for i in itertools.count())))
        text = "".join(p for p in pieces if p)
        reason = "length" if len(pieces) >= generation.max_tokens else "stop"
        if native:
            meta = _meta(generation, len(pieces), {"type": reason})
            await _respond_json(writer, 200, {"text": text, "meta_info": meta})
        else:
            await _respond_json(writer, 200, {"choices": [{"index": 0, "text": text, "finish_reason": reason}]})
        return reason

    async def _stream(
        self, generation: _Generation, native: bool, path: str, writer: asyncio.StreamWriter, gone: asyncio.Event
    ) -> str:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n"
        )
        chat = path == "/v1/chat/completions"
        text = ""
        if chat:
            await _event(writer, _openai_chunk(generation.rid, chat, None, None, role=True))
        produced = 0
        while True:
            if gone.is_set():
                return "disconnect"
            if generation.aborted.is_set():
                if native:
                    meta = _meta(generation, produced, {"type": "abort", "message": "Abort before/while generating"})
                    await _event(writer, {"text": "" if self.incremental else text, "meta_info": meta})
                await _done(writer)
                return "abort"
            if produced == generation.drop_after:
                writer.transport.abort()
                return "dropped"
            if produced == generation.error_after:
                await _event(writer, {"error": {"message": "injected failure"}})
                await _done(writer)
                return "error"
            if produced == generation.self_abort_after and native:
                meta = _meta(generation, produced, {"type": "abort", "message": "injected abort"})
                await _event(writer, {"text": "" if self.incremental else text, "meta_info": meta})
                await _done(writer)
                return "abort"
            if produced == generation.stall_after:
                await gone.wait()
                return "disconnect"
            await asyncio.sleep(self.token_interval_s)
            if gone.is_set() or generation.aborted.is_set():
                continue
            word = self._word(generation, produced)
            following = self._word(generation, produced + 1) if word is not None else None
            if word is None:  # nothing to say at all
                reason = "length" if generation.max_tokens == 0 else "stop"
                await _event(writer, _final(generation, native, chat, produced, "", text, reason, self.incremental))
                await _done(writer)
                return reason
            produced += 1
            text += word
            if following is None:
                reason = "length" if produced >= generation.max_tokens else "stop"
                await _event(writer, _final(generation, native, chat, produced, word, text, reason, self.incremental))
                await _done(writer)
                return reason
            if native:
                meta = _meta(generation, produced, None)
                await _event(
                    writer, {"text": word if self.incremental else text, "output_ids": [produced], "meta_info": meta}
                )
            else:
                await _event(writer, _openai_chunk(generation.rid, chat, word, None))


def _common_prefix_len(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _meta(generation: _Generation, completion_tokens: int, finish_reason: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "id": generation.rid,
        "finish_reason": finish_reason,
        "prompt_tokens": len(generation.prompt),
        "completion_tokens": completion_tokens,
        "cached_tokens": generation.cached_tokens,
    }


def _final(
    generation: _Generation,
    native: bool,
    chat: bool,
    produced: int,
    word: str,
    text: str,
    reason: str,
    incremental: bool,
) -> dict[str, Any]:
    if native:
        meta = _meta(generation, produced, {"type": reason})
        return {"text": word if incremental else text, "output_ids": [produced], "meta_info": meta}
    return _openai_chunk(generation.rid, chat, word, reason)


def _openai_chunk(rid: str, chat: bool, piece: str | None, reason: str | None, role: bool = False) -> dict[str, Any]:
    if chat:
        delta: dict[str, Any] = {"role": "assistant"} if role else ({"content": piece} if piece else {})
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": reason}
        return {"id": rid, "object": "chat.completion.chunk", "choices": [choice]}
    return {
        "id": rid,
        "object": "text_completion",
        "choices": [{"index": 0, "text": piece or "", "finish_reason": reason}],
    }


async def _event(writer: asyncio.StreamWriter, payload: dict[str, Any]) -> None:
    writer.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
    await writer.drain()


async def _done(writer: asyncio.StreamWriter) -> None:
    writer.write(b"data: [DONE]\n\n")
    await writer.drain()


async def _respond(writer: asyncio.StreamWriter, status: int, body: bytes, content_type: str = "text/plain") -> None:
    reason = {200: "OK", 404: "Not Found"}.get(status, "Error")
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n".encode("latin-1")
        + body
    )
    await writer.drain()


async def _respond_json(writer: asyncio.StreamWriter, status: int, payload: Any) -> None:
    await _respond(writer, status, json.dumps(payload).encode(), "application/json")
